"""Training objectives: standard CE, PGD-AT, TRADES, MART and FGSM-RS.

Each objective has two halves, so the training step can craft adversarial
inputs *outside* the differentiated loss (no gradient flows through the
attack, and no backward pass of the attack is traced):

  x_adv = objective.attack(variables, x, y, key)      # eval-mode BatchNorm
  loss, (stats, metrics) = objective.loss(params, stats, x, x_adv, y)

BatchNorm. By default attacks run with BatchNorm in inference mode (running
statistics, never updated). The losses run the model in training mode and
update the running statistics once per train-mode forward pass of the
reference, in the reference's order:

  PGD-AT, FGSM-RS  one pass, adversarial: the training pass of their
          references. Those scripts make further train-mode passes (the
          attack's, a clean one for the train accuracy); see ``attack_bn``
          below and docs/adversarial_training.md.
  TRADES  three passes (trades.py): natural (for the CE), adversarial,
          natural again (the KL target). The third pass's logits equal the
          first's (train-mode BatchNorm normalises with batch statistics), so
          only its running-statistics update is replayed, at no convolution
          cost (see ``_replayable_train_forward``); clean images then carry
          about 0.67 of the running statistics, as in the reference.
  MART    two passes (mart.py): natural, then adversarial.

``objective.attack_bn='train'`` (PGD-AT and FGSM-RS only) instead attacks in
training mode as locuslab's robust_overfitting ``train_cifar.py`` and
fast_adversarial ``train_fgsm.py`` do: the attack's gradients use batch
statistics, and every forward pass of the attack updates the running
statistics (``Objective.attack_with_stats``); for PGD-AT the step also makes
the script's clean train-mode forward pass with the updated weights
(``Objective.after_update``), so the running statistics end on a clean
batch. TRADES's and MART's references attack in eval mode, so the flag is
refused for them.

References (the exact details, from the authors' code):
  PGD-AT  Madry et al. 2018 / Rice et al. 2020 (train_cifar.py): CE on PGD
          examples (uniform random start).
  TRADES  Zhang et al. 2019 (yaodongyu/TRADES trades.py): attack maximises
          KL(f(x) || f(x')) from x + 0.001 N(0, I); loss CE(f(x), y) +
          beta * KL(f(x) || f(x_adv)) averaged over the batch.
  MART    Wang et al. 2020 (YisenWang/MART mart.py): attack is CE-PGD from
          x + 0.001 N(0, I); loss BCE-style adversarial term + beta * KL
          weighted by (1 - p_y(x)).
  FGSM-RS Wong et al. 2020 (fast_adversarial train_fgsm.py): uniform start in
          the eps ball, one signed step of ``step_size`` (10/255 at eps
          8/255), projected.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from robustjax import attacks
from robustjax.errors import ConfigError

OBJECTIVES = ("standard", "pgd_at", "trades", "mart", "fgsm_rs")
# BatchNorm mode of the attack: 'eval' (running statistics, never updated) or
# 'train' (batch statistics, running statistics updated by every forward).
ATTACK_BN = ("eval", "train")
# The objectives whose reference scripts attack in train mode.
TRAIN_MODE_ATTACK_OBJECTIVES = ("pgd_at", "fgsm_rs")

Array = jax.Array
BatchStats = Any


@dataclasses.dataclass(frozen=True)
class Objective:
  """The halves of a training objective (see the module docstring).

  attack: ``(variables, x [B, H, W, C], y [B], key) -> x_adv [B, H, W, C]``,
    or None for standard training. With ``attack_bn='train'`` it runs the
    train-mode attack and drops its statistics (for callers outside the
    training step).
  loss: ``(params, batch_stats, x, x_adv, y) -> (loss, (batch_stats,
    metrics))``, differentiable in ``params``.
  attack_with_stats: None (eval-mode attack), or with ``attack_bn='train'``
    ``(params, batch_stats, x, y, key) -> (x_adv, batch_stats)``, the
    statistics after the attack's train-mode forward passes; the training
    step then calls it instead of ``attack`` and hands its statistics to
    ``loss``.
  after_update: None, or ``(params, batch_stats, x) -> batch_stats``, a
    train-mode forward pass the step makes with the updated parameters
    (only its statistics are kept).
  """
  name: str
  attack: Callable[..., Array] | None
  loss: Callable[..., tuple[Array, tuple[Any, dict[str, Array]]]]
  attack_with_stats: Callable[..., tuple[Array, BatchStats]] | None = None
  after_update: Callable[..., BatchStats] | None = None


def validate(cfg: Any) -> None:
  """Raises ``ConfigError`` for an unknown name or out-of-range values."""
  if cfg.name not in OBJECTIVES:
    raise ConfigError(f"unknown objective '{cfg.name}'; choose one of: "
                      f"{', '.join(OBJECTIVES)}")
  if cfg.name == "standard":
    return
  if not 0.0 <= float(cfg.eps) <= 1.0:
    raise ConfigError(f"objective.eps={cfg.eps} is outside [0, 1]; epsilons "
                      "are in pixel units of [0, 1] images, e.g. 8/255")
  if cfg.name != "fgsm_rs" and int(cfg.steps) < 1:
    raise ConfigError(f"objective.steps={cfg.steps} must be at least 1")
  attack_bn = cfg.get("attack_bn", "eval")
  if attack_bn not in ATTACK_BN:
    raise ConfigError(f"unknown objective.attack_bn '{attack_bn}'; choose "
                      f"one of: {', '.join(ATTACK_BN)}")
  if attack_bn == "train" and cfg.name not in TRAIN_MODE_ATTACK_OBJECTIVES:
    raise ConfigError(
        f"objective.attack_bn='train' is for "
        f"{' and '.join(TRAIN_MODE_ATTACK_OBJECTIVES)} (their reference "
        f"scripts attack in train mode); {cfg.name}'s reference attacks in "
        "eval mode, so drop the flag")


def _apply(model, params, batch_stats, x, train: bool):
  """Model forward; in train mode returns ``(logits, new_batch_stats)``."""
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return model.apply(variables, x, train=False)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=["batch_stats"])
  return logits, updates.get("batch_stats", batch_stats)


def _replayable_train_forward(model, params, batch_stats: BatchStats,
                              x: Array
                              ) -> tuple[Array, BatchStats,
                                         Callable[[BatchStats], BatchStats]]:
  """A train-mode forward pass, plus a function that replays its update.

  Returns ``(logits [B, C], new_stats, replay)`` where ``replay(r)`` is the
  running statistics a second train-mode pass on the same ``x`` with the same
  ``params`` would leave when started from ``r`` instead of ``batch_stats``.

  Why this is exact and cheap: BatchNorm's update ``r' = m r + (1 - m) b`` is
  affine in the running statistics ``r``, and in train mode the batch
  statistics ``b`` do not depend on ``r``. So ``replay(r) = new_stats +
  m (r - batch_stats)``; ``jax.linearize`` in ``r`` gives the slope ``m``
  from the model itself (no momentum is hard-coded), and its linear part
  holds no convolution.
  """
  (logits, new_stats), slope = jax.linearize(
      lambda stats: _apply(model, params, stats, x, True), batch_stats)

  def replay(stats: BatchStats) -> BatchStats:
    delta = jax.tree.map(jnp.subtract, stats, batch_stats)
    return jax.tree.map(jnp.add, new_stats, slope(delta)[1])

  return logits, new_stats, replay


def _accuracy(logits: Array, y: Array) -> Array:
  return jnp.mean(jnp.argmax(logits, -1) == y)


def _kl_rows(p_logits: Array, q_logits: Array) -> Array:
  """KL(softmax(p) || softmax(q)) per example, [B], computed in float32."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32))
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32))
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _train_mode_linf_attack(model, params, batch_stats: BatchStats, x: Array,
                            y: Array, key: Array | None, *, eps: float,
                            step_size: float, steps: int, random_start: bool,
                            final_forward: bool
                            ) -> tuple[Array, BatchStats]:
  """L-inf CE attack with BatchNorm in train mode, threading its statistics.

  The loop of robust_overfitting's ``attack_pgd`` and of fast_adversarial's
  FGSM step: a uniform start in the ball (clipped to [0, 1]), then ``steps``
  signed steps, each a train-mode forward pass (batch statistics in the
  gradient, one running-statistics update). ``final_forward`` adds the one
  more train-mode forward at the result that ``attack_pgd`` makes to pick
  its restart.

  x: [B, H, W, C] in [0, 1]; y: [B]. Returns ``(x_adv, batch_stats)``,
  ``x_adv`` stop_gradient-ed, within the ball and [0, 1].
  """
  x_adv = x
  if random_start:
    x_adv = jnp.clip(
        x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), 0.0, 1.0)

  def ce_and_stats(z, stats):
    logits, stats = _apply(model, params, stats, z, True)
    # The mean over the batch, as F.cross_entropy: in train mode BatchNorm
    # couples the examples, so this is not a per-example gradient.
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y)), stats

  grad_fn = jax.grad(ce_and_stats, has_aux=True)
  for _ in range(steps):  # unrolled, as the library's attacks
    g, batch_stats = grad_fn(x_adv, batch_stats)
    delta = jnp.clip(x_adv + step_size * jnp.sign(g) - x, -eps, eps)
    x_adv = jnp.clip(x + delta, 0.0, 1.0)
  if final_forward:
    _, batch_stats = _apply(model, params, batch_stats, x_adv, True)
  return jax.lax.stop_gradient(x_adv), batch_stats


def make_objective(cfg: Any, model) -> Objective:
  """Builds the objective named ``cfg.name`` for a Flax ``model``.

  Config keys: ``name, eps, step_size, steps, beta, random_start`` (PGD-AT
  only; TRADES and MART always start from x + 0.001 N(0, I) as their code),
  ``attack_bn`` ('eval' by default; 'train' for PGD-AT and FGSM-RS, see the
  module docstring).
  """
  validate(cfg)
  name = cfg.name

  def ce_loss(params, batch_stats, x, x_adv, y):
    inputs = x if x_adv is None else x_adv
    logits, new_stats = _apply(model, params, batch_stats, inputs, True)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y))
    key = "accuracy" if x_adv is None else "adv_accuracy"
    return loss, (new_stats, {"loss": loss, key: _accuracy(logits, y)})

  if name == "standard":
    return Objective(name, None, ce_loss)

  eps, steps = float(cfg.eps), int(cfg.get("steps", 1))
  step_size = float(cfg.step_size)
  train_bn = cfg.get("attack_bn", "eval") == "train"

  def eval_logits_fn(variables):
    return lambda z: model.apply(variables, z, train=False)

  if name in ("pgd_at", "fgsm_rs") and train_bn:
    # robust_overfitting train_cifar.py (PGD): `steps` attack forwards, the
    # restart-selection forward, and after the optimizer step a clean
    # forward (its train accuracy) that updates the statistics last.
    # fast_adversarial train_fgsm.py: one forward at the random start.
    pgd = name == "pgd_at"

    def attack_with_stats(params, batch_stats, x, y, key):
      return _train_mode_linf_attack(
          model, params, batch_stats, x, y, key, eps=eps,
          step_size=step_size, steps=steps if pgd else 1,
          random_start=bool(cfg.get("random_start", True)) if pgd else True,
          final_forward=pgd)

    def train_mode_attack(variables, x, y, key):
      return attack_with_stats(variables["params"], variables["batch_stats"],
                               x, y, key)[0]

    def clean_forward(params, batch_stats, x):
      return _apply(model, params, batch_stats, x, True)[1]

    return Objective(name, train_mode_attack, ce_loss, attack_with_stats,
                     clean_forward if pgd else None)

  if name == "pgd_at":
    def pgd_attack(variables, x, y, key):
      return attacks.pgd(eval_logits_fn(variables), x, y, key=key, eps=eps,
                         step_size=step_size, steps=steps, norm="linf",
                         random_start=bool(cfg.get("random_start", True)),
                         loss="ce")
    return Objective(name, pgd_attack, ce_loss)

  if name == "fgsm_rs":
    def fgsm_attack(variables, x, y, key):
      return attacks.fgsm(eval_logits_fn(variables), x, y, eps=eps, key=key,
                          random_start=True, step_size=step_size)
    return Objective(name, fgsm_attack, ce_loss)

  beta = float(cfg.beta)

  if name == "trades":
    def trades_attack(variables, x, y, key):
      del y  # TRADES's attack is label-free: it moves away from f(x).
      logits_fn = eval_logits_fn(variables)
      clean_logits = jax.lax.stop_gradient(logits_fn(x))
      return attacks.projected_gradient_ascent(
          lambda z: _kl_rows(clean_logits, logits_fn(z)), x, key=key,
          eps=eps, step_size=step_size, steps=steps, norm="linf",
          init="normal", init_scale=0.001)

    def trades_loss(params, batch_stats, x, x_adv, y):
      # trades.py's three train-mode passes: natural (CE), adversarial,
      # natural again (the KL target). The third pass's logits equal the
      # first's, so `logits` serves both (same loss, same gradient) and only
      # the third pass's statistics update is replayed after the second.
      logits, stats, replay_natural = _replayable_train_forward(
          model, params, batch_stats, x)
      adv_logits, stats = _apply(model, params, stats, x_adv, True)
      stats = replay_natural(stats)
      natural = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), y))
      robust = jnp.mean(_kl_rows(logits, adv_logits))
      loss = natural + beta * robust
      return loss, (stats, {"loss": loss, "natural_loss": natural,
                            "robust_loss": robust,
                            "accuracy": _accuracy(logits, y),
                            "adv_accuracy": _accuracy(adv_logits, y)})
    return Objective(name, trades_attack, trades_loss)

  # MART.
  def mart_attack(variables, x, y, key):
    logits_fn = eval_logits_fn(variables)
    return attacks.projected_gradient_ascent(
        lambda z: attacks.cross_entropy(logits_fn(z), y), x, key=key,
        eps=eps, step_size=step_size, steps=steps, norm="linf",
        init="normal", init_scale=0.001)

  def mart_loss(params, batch_stats, x, x_adv, y):
    logits, stats = _apply(model, params, batch_stats, x, True)
    adv_logits, stats = _apply(model, params, stats, x_adv, True)
    logits, adv_logits = logits.astype(jnp.float32), adv_logits.astype(
        jnp.float32)
    adv_probs = jax.nn.softmax(adv_logits)
    # The most likely wrong class under attack: the top class, or the second
    # when the top one is the label.
    top2 = jnp.argsort(adv_probs, axis=-1)[:, -2:]
    wrong = jnp.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = (optax.softmax_cross_entropy_with_integer_labels(adv_logits, y)
           - jnp.log(1.0001 - jnp.take_along_axis(
               adv_probs, wrong[:, None], axis=-1)[:, 0] + 1e-12))
    nat_probs = jax.nn.softmax(logits)
    true_probs = jnp.take_along_axis(nat_probs, y[:, None], axis=-1)[:, 0]
    kl = jnp.sum(nat_probs * (jnp.log(nat_probs + 1e-12)
                              - jnp.log(adv_probs + 1e-12)), axis=-1)
    robust = jnp.mean(kl * (1.0000001 - true_probs))
    adv_term = jnp.mean(bce)
    loss = adv_term + beta * robust
    return loss, (stats, {"loss": loss, "adv_loss": adv_term,
                          "robust_loss": robust,
                          "accuracy": _accuracy(logits, y),
                          "adv_accuracy": _accuracy(adv_logits, y)})
  return Objective(name, mart_attack, mart_loss)
