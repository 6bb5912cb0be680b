"""Training the mixing network: the reference's recipe.

Both base models stay frozen; only the mixing network (and its output
BatchNorm's statistics) learns. Per clean training batch of B images:

1. ``AttackRecipe``: randomised adaptive APGD against the mixture in the
   ``attack`` phase (running BatchNorm statistics, training constants, no
   squeeze). One untargeted run maximises ``(1 - w) CE(out, y) + w
   BCE(gamma, 1)``, then ``n_targets`` targeted runs maximise ``(1 - w)
   DLR_t(out, y) + w BCE(gamma, 1)`` towards the 2nd, 3rd, ... largest
   class of the clean mixture output. Per example ``w ~ U(0, w_max)`` and
   ``eps = eps0 * U(0.4, 1.1)``; per run the iteration count is
   ``round(chi2(steps_df))``, shared by the batch. Each run keeps APGD's
   last misclassified iterate, or its random start if the point was never
   fooled. The BCE term pushes ``gamma`` down, towards the standard model:
   the attack aims at the mixing weight as well as the experts.
2. A buffer of ``(1 + n_targets)`` B clean images (the batch and fresh
   random training images, all randomly cropped and flipped) labelled 0 and
   the ``(1 + n_targets)`` B adversarial ones labelled 1, shuffled and cut
   into mini-batches of B (clean and adversarial mixed in each, which
   matters because the output BatchNorm standardises ``gamma`` per batch).
3. ``mixer_loss`` per mini-batch in the ``train`` phase, with an optimizer
   step every ``accum`` mini-batches (gradients averaged): AdamW (weight
   decay 1e-5), the cosine schedule times the exponential warm-up factor
   ``1 - exp(-(t + 1) / (T // 25))``, clipping at global norm 10.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import data
from robustjax.attacks import apgd, iterative as it
from robustjax.attacks.losses import targeted_dlr
from robustjax.errors import ConfigError
from robustjax.smoothing.adaptive import AdaptiveClassifier


@dataclasses.dataclass(frozen=True)
class AttackRecipe:
  """The randomised adaptive attacks of one training batch.

  eps: the base radius (Linf); each example draws ``eps * U(eps_factor)``.
  steps_df: iterations per run are ``round(chi2(steps_df))`` (at least 1,
    at most ``max_steps``; 0 there means ``3 * steps_df``).
  loss_weight_max: each example's BCE weight ``w ~ U(0, loss_weight_max)``.
  n_targets: targeted runs after the untargeted one.
  rho: APGD's step-size rule threshold.
  """
  eps: float = 8 / 255
  eps_factor: tuple[float, float] = (0.4, 1.1)
  steps_df: float = 75.0
  max_steps: int = 0
  loss_weight_max: float = 0.4
  n_targets: int = 9
  rho: float = 0.75

  @property
  def step_cap(self) -> int:
    return int(self.max_steps) or max(int(np.ceil(3 * self.steps_df)), 1)

  def validated(self) -> "AttackRecipe":
    if not 0.0 <= self.eps <= 1.0:
      raise ConfigError(f"attack eps={self.eps} is outside [0, 1]")
    lo, hi = self.eps_factor
    if not 0.0 <= lo <= hi:
      raise ConfigError(f"eps_factor={self.eps_factor} must be (low, high) "
                        "with 0 <= low <= high")
    if self.steps_df <= 0 or self.n_targets < 0:
      raise ConfigError("steps_df must be positive and n_targets >= 0")
    if not 0.0 <= self.loss_weight_max <= 1.0:
      raise ConfigError(f"loss_weight_max={self.loss_weight_max} is outside "
                        "[0, 1]")
    return self


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """``w_i [c_bce BCE(gamma_i, s_i) + c_ce CE_i + c_prod BCE_i CE_i]`` with
  ``w_i = scale_clean`` (clean) or ``scale_ada`` (adversarial)."""
  c_bce: float = 1.0
  c_ce: float = 0.5
  c_prod: float = 0.1
  scale_clean: float = 2.0
  scale_ada: float = 1.0


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``[B]`` binary cross-entropy of ``sigmoid(logits)`` against
  ``targets`` in {0, 1}, computed stably."""
  return optax.sigmoid_binary_cross_entropy(logits, targets)


def mixer_loss(log_probs: jax.Array, gamma: jax.Array, labels: jax.Array,
               is_adv: jax.Array, weights: jax.Array,
               c: LossWeights) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The mixing network's loss, averaged over the batch.

  Args:
    log_probs: ``[B, C]`` log-mixture; gamma: ``[B]``; labels: ``[B]``;
    is_adv: ``[B]`` 1.0 for adversarial, 0.0 for clean; weights: ``[B]``.
    c: the loss constants.

  Returns:
    ``(loss, {"bce", "ce"})`` with the batch means of both terms.
  """
  bce = bce_with_logits(gamma, is_adv)
  # The output is already a log-probability: CE = -log m_y.
  ce = -jnp.take_along_axis(log_probs, labels[:, None], -1)[:, 0]
  per = weights * (c.c_bce * bce + c.c_ce * ce + c.c_prod * bce * ce)
  return jnp.mean(per), {"bce": jnp.mean(bce), "ce": jnp.mean(ce)}


def attack_objective(output: tuple[jax.Array, jax.Array], y: jax.Array,
                     target: jax.Array, w: jax.Array, targeted: jax.Array
                     ) -> jax.Array:
  """``[B]`` ``(1 - w) L + w BCE(gamma, 1)`` (maximised), ``L`` the CE on
  the log-mixture, or the targeted DLR towards ``target`` when
  ``targeted`` (a traced bool, so one program serves both)."""
  log_probs, gamma = output
  ce = -jnp.take_along_axis(log_probs, y[:, None], -1)[:, 0]
  loss = jnp.where(targeted, targeted_dlr(log_probs, y, target), ce)
  return (1.0 - w) * loss + w * bce_with_logits(gamma, jnp.ones_like(gamma))


def warmup_cosine(lr: float, total_steps: int) -> optax.Schedule:
  """``lr (1 + cos(pi t / T)) / 2 * (1 - exp(-(t + 1) / (T // 25)))``."""
  tau = max(total_steps // 25, 1)

  def schedule(t):
    t = jnp.asarray(t, jnp.float32)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, total_steps)
                                  / total_steps))
    return lr * cosine * (1.0 - jnp.exp(-(t + 1.0) / tau))

  return schedule


def make_optimizer(lr: float, total_steps: int, *, weight_decay: float = 1e-5,
                   clip_norm: float = 10.0, accum: int = 1
                   ) -> optax.GradientTransformation:
  """AdamW on the warm-up cosine schedule with gradient clipping, stepping
  every ``accum`` calls (gradients averaged)."""
  tx = optax.chain(
      optax.clip_by_global_norm(clip_norm),
      optax.adamw(warmup_cosine(lr, max(total_steps, 1)), b1=0.9, b2=0.999,
                  eps=1e-8, weight_decay=weight_decay))
  return optax.MultiSteps(tx, every_k_schedule=max(accum, 1)) if accum > 1 \
      else tx


class AdaptiveAttack:
  """The randomised adaptive APGD runs of one training batch.

  ``attack(variables, x [B, ...], y [B], key, rng) -> x_adv [(1 + n_targets)
  B, ...]`` (runs stacked in order: untargeted, then each target);
  ``rng`` (numpy) draws the iteration counts. One compiled step serves
  every run and every iteration count (the step-size schedule is an input).
  """

  def __init__(self, classifier: AdaptiveClassifier, recipe: AttackRecipe):
    self.recipe = recipe.validated()
    self._init, self._step, self._ranking = _compiled_attack(
        classifier, self.recipe.rho, self.recipe.step_cap)

  def iterations(self, rng: np.random.Generator) -> int:
    return int(np.clip(round(rng.chisquare(self.recipe.steps_df)), 1,
                       self.recipe.step_cap))

  def __call__(self, variables, x: jax.Array, y: jax.Array, key: jax.Array,
               rng: np.random.Generator) -> jax.Array:
    r = self.recipe
    b = x.shape[0]
    k_eps, k_w, k_runs = jax.random.split(key, 3)
    eps = r.eps * jax.random.uniform(k_eps, (b,), minval=r.eps_factor[0],
                                     maxval=r.eps_factor[1])
    w = jax.random.uniform(k_w, (b,), maxval=r.loss_weight_max)
    ranking = self._ranking(variables, x)
    keys = jax.random.split(k_runs, b)
    out = []
    for run in range(1 + r.n_targets):
      targeted = run > 0
      target = ranking[:, min(run, ranking.shape[1] - 1)]
      keys_r = it.fold_in_each(keys, run)
      n = self.iterations(rng)
      is_check, window = apgd.checkpoint_schedule(n)
      pad = r.step_cap - n
      is_check = jnp.asarray(np.pad(is_check, (0, pad)))
      window = jnp.asarray(np.pad(window, (0, pad)))
      flag = jnp.asarray(targeted)
      state = self._init(variables, x, y, target, keys_r, eps, w, flag)
      for i in range(n):
        state = self._step(variables, state, x, y, target, keys_r, eps, w,
                           flag, jnp.int32(i), is_check, window)
      out.append(state["x_best_adv"])
    return jnp.concatenate(out)


@functools.lru_cache(maxsize=8)
def _compiled_attack(classifier: AdaptiveClassifier, rho: float, cap: int):
  """The jitted ``(init, step, ranking)`` of ``AdaptiveAttack``, shared by
  every attack on one classifier (cached: one compile per process)."""

  def model(variables):
    def fn(z, keys):
      del keys  # the mixture is deterministic
      out = classifier.forward(variables, z, "attack")
      return out.log_probs, out.gamma
    return fn

  def objective(w, targeted):
    return lambda out, y, t: attack_objective(out, y, t, w, targeted)

  @jax.jit
  def init(variables, x, y, target, keys, eps, w, targeted):
    return apgd.init_state(model(variables), x, y, keys, eps=eps,
                           norm="linf", loss=objective(w, targeted),
                           target=target)

  @jax.jit
  def step(variables, state, x, y, target, keys, eps, w, targeted, i,
           is_check, window):
    fn = apgd.make_step(model(variables), x, y, keys, eps=eps, norm="linf",
                        loss=objective(w, targeted), steps=cap,
                        target=target, rho=rho, schedule=(is_check, window))
    return fn(state, i)

  @jax.jit
  def ranking(variables, x):
    return jnp.argsort(-classifier.forward(variables, x, "attack").log_probs,
                       axis=-1)

  return init, step, ranking


@dataclasses.dataclass
class TrainResult:
  """The trained mixer variables and the logged history (one dict per
  logged clean batch)."""
  mixer: dict[str, Any]
  history: list[dict[str, float]]


def train_mixer(classifier: AdaptiveClassifier, base: Mapping[str, Any],
                mixer: Mapping[str, Any], train: data.ArraySplit, *,
                batch_size: int, num_batches: int, recipe: AttackRecipe,
                loss: LossWeights, lr: float, weight_decay: float = 1e-5,
                clip_norm: float = 10.0, accum: int = 4, seed: int = 0,
                log: Callable[[str], None] | None = None,
                log_every: int = 1) -> TrainResult:
  """Trains the mixing network of ``classifier`` with both models frozen.

  Args:
    classifier: the adaptive mixture.
    base: ``{"std": variables, "rob": variables}``.
    mixer: the mixer's initial ``{"params", "batch_stats"}``.
    train: the training split (uint8 images).
    batch_size: B, clean images per batch (and per mini-batch).
    num_batches: clean batches to train on.
    recipe: the training attacks.
    loss: the loss constants.
    lr, weight_decay, clip_norm: AdamW, clipping.
    accum: mini-batches per optimizer step; -1: one step per clean batch.
    seed: data order, augmentation and attack randomness.
    log: called with a line every ``log_every`` clean batches.

  Returns:
    The trained mixer and the history.
  """
  if batch_size < 2:
    raise ConfigError("the mixer's batch size must be at least 2 (its "
                      "BatchNorm and clamp use batch statistics)")
  copies = 1 + recipe.n_targets
  minibatches = 2 * copies
  accum = minibatches if accum == -1 else int(accum)
  if accum < 1:
    raise ConfigError(f"accum={accum} must be >= 1, or -1 (one step per "
                      "clean batch)")
  total = minibatches * num_batches // accum
  tx = make_optimizer(lr, total, weight_decay=weight_decay,
                      clip_norm=clip_norm, accum=accum)
  params, stats = mixer["params"], mixer["batch_stats"]
  opt_state = tx.init(params)
  attack = AdaptiveAttack(classifier, recipe)
  step_fn = _train_step(classifier, tx, loss)
  augment = jax.jit(functools.partial(data.random_crop_flip, pad=4))
  root = jax.random.key(seed)
  n_train = len(train)
  history = []
  for i in range(num_batches):
    start = time.time()
    rng = np.random.default_rng([seed, i])
    k_aug, k_extra, k_att, k_perm = jax.random.split(
        jax.random.fold_in(root, i), 4)
    idx = rng.choice(n_train, batch_size, replace=False)
    extra = rng.choice(n_train, batch_size * recipe.n_targets, replace=False)
    x = augment(k_aug, jnp.asarray(train.images[idx]))
    y = jnp.asarray(train.labels[idx], jnp.int32)
    x_extra = augment(k_extra, jnp.asarray(train.images[extra]))
    y_extra = jnp.asarray(train.labels[extra], jnp.int32)
    variables = {**base, "mixer": {"params": params, "batch_stats": stats}}
    x_adv = attack(variables, x, y, k_att, rng)
    xs = jnp.concatenate([x, x_extra, x_adv])
    ys = jnp.concatenate([y, y_extra, jnp.tile(y, copies)])
    n_clean = copies * batch_size
    s = jnp.concatenate([jnp.zeros(n_clean), jnp.ones(n_clean)])
    wts = jnp.where(s > 0, loss.scale_ada, loss.scale_clean)
    perm = jax.random.permutation(k_perm, xs.shape[0])
    sums = {"loss": 0.0, "bce": 0.0, "ce": 0.0}
    for m in range(minibatches):
      rows = perm[m * batch_size:(m + 1) * batch_size]
      params, stats, opt_state, metrics = step_fn(
          params, stats, opt_state, base, xs[rows], ys[rows], s[rows],
          wts[rows])
      for k in sums:
        sums[k] += float(metrics[k]) / minibatches
    row = dict(batch=i + 1, seconds=round(time.time() - start, 2), **sums)
    history.append(row)
    if log is not None and ((i + 1) % log_every == 0 or i + 1 == num_batches):
      log(f"batch {i + 1}/{num_batches}: loss {sums['loss']:.4f} (bce "
          f"{sums['bce']:.4f}, ce {sums['ce']:.4f}) {row['seconds']} s")
  return TrainResult({"params": params, "batch_stats": stats}, history)


def _train_step(classifier: AdaptiveClassifier,
                tx: optax.GradientTransformation, c: LossWeights):
  """The jitted ``(params, stats, opt_state, base, x, y, s, w) -> (params,
  stats, opt_state, metrics)`` of one mini-batch."""

  def loss_fn(params, stats, base, x, y, s, w):
    out = classifier.forward(
        {**base, "mixer": {"params": params, "batch_stats": stats}}, x,
        "train")
    value, metrics = mixer_loss(out.log_probs, out.gamma, y, s, w, c)
    return value, (out.batch_stats, dict(metrics, loss=value))

  @jax.jit
  def step(params, stats, opt_state, base, x, y, s, w):
    grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(
        params, stats, base, x, y, s, w)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, metrics

  return step
