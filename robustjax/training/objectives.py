"""Training objectives: standard CE, PGD-AT, TRADES, MART and FGSM-RS.

One module of about 460 lines on purpose: the registry and the five
objectives, each a small registered function, sit together so that their
BatchNorm passes (the subtle part of matching the references) can be
compared side by side.

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

Objectives are registered by name (``register``), like models and attacks,
and built with ``make_objective({"name": ..., "attack": ..., "beta": ...},
model)``. The attack is written in the attack registry's vocabulary
(``robustjax.attacks.build``); each objective's reference attack is:

  pgd_at   {"name": "pgd"}                                (CE, uniform start)
  trades   {"name": "pgd", "loss": "kl", "start": "normal"}
  mart     {"name": "pgd", "start": "normal"}             (CE)
  fgsm_rs  {"name": "fgsm", "start": "uniform"}

(``reference_params`` writes them with given budgets); another attack is
allowed, with a warning naming the difference.

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
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from absl import logging

from robustjax import attacks
from robustjax.errors import ConfigError

# BatchNorm mode of the attack: 'eval' (running statistics, never updated) or
# 'train' (batch statistics, running statistics updated by every forward).
ATTACK_BN = ("eval", "train")

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


# factory(model, attack, *, beta, attack_bn) -> Objective
ObjectiveFactory = Callable[..., Objective]


@dataclasses.dataclass(frozen=True)
class _Entry:
  factory: ObjectiveFactory
  # The reference's attack (name and the parameters that define it), or
  # None for an objective without one.
  reference_attack: Mapping[str, Any] | None
  # Attack names whose reference attacks in train mode (attack_bn='train').
  train_mode_attacks: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, reference_attack: Mapping[str, Any] | None,
             train_mode_attacks: tuple[str, ...] = ()
             ) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
  """Decorator adding an objective factory to the registry under ``name``.

  A factory is ``(model, attack, *, beta, attack_bn) -> Objective``:
  ``attack`` is a built ``robustjax.attacks.Attack`` (None for an objective
  whose ``reference_attack`` is None), ``beta`` the robust term's weight
  where the objective has one. ``reference_attack``: the attack name and
  defining parameters of the objective's reference (a config that differs
  gets a warning). ``train_mode_attacks``: the attack names this objective
  can also run with ``attack_bn='train'`` (its reference attacks in train
  mode); empty refuses the flag.
  """
  def decorator(factory: ObjectiveFactory) -> ObjectiveFactory:
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is registered twice")
    _REGISTRY[name] = _Entry(factory, reference_attack, train_mode_attacks)
    return factory
  return decorator


def reference_attack(name: str) -> dict[str, Any] | None:
  """The attack name and defining parameters of objective ``name``'s
  reference, e.g. ``{"name": "pgd", "loss": "kl", "start": "normal"}``."""
  if name not in _REGISTRY:
    raise ConfigError(f"unknown objective '{name}'; choose one of: "
                      f"{', '.join(available_objectives())}")
  ref = _REGISTRY[name].reference_attack
  return None if ref is None else dict(ref)


def available_objectives() -> list[str]:
  """The registered objective names, sorted."""
  return sorted(_REGISTRY)


def reference_params(name: str, *, eps: float = 8 / 255,
                     step_size: float = 2 / 255, steps: int = 10,
                     beta: float = 6.0, attack_bn: str = "eval"
                     ) -> dict[str, Any]:
  """``make_objective``'s params for objective ``name`` with its reference
  attack at these budgets (``steps`` unused by single-step attacks)."""
  attack = reference_attack(name)
  if attack is not None:
    attack.update(eps=eps, step_size=step_size)
    if attack["name"] != "fgsm":
      attack["steps"] = steps
  return {"name": name, "beta": beta, "attack_bn": attack_bn,
          "attack": attack}


def make_objective(params: Mapping[str, Any], model) -> Objective:
  """The objective ``params`` names, for a Flax ``model``.

  ``params``: ``name`` (a registered objective), ``attack`` (an attack in
  the registry's vocabulary, e.g. ``{"name": "pgd", "eps": 8/255,
  "step_size": 2/255, "steps": 10}``; ignored by ``standard``), ``beta``
  (TRADES and MART) and ``attack_bn`` (``'eval'``, the default, or
  ``'train'`` where the reference attacks in train mode; see the module
  docstring). An ``ml_collections.ConfigDict`` works. ``model=None``
  checks ``params`` without building anything usable.

  Raises:
    ConfigError: an unknown objective or attack, or a bad value.
  """
  name = str(params.get("name", ""))
  if name not in _REGISTRY:
    raise ConfigError(f"unknown objective '{name}'; choose one of: "
                      f"{', '.join(available_objectives())}")
  entry = _REGISTRY[name]
  attack_bn = str(params.get("attack_bn", "eval"))
  if attack_bn not in ATTACK_BN:
    raise ConfigError(f"unknown objective.attack_bn '{attack_bn}'; choose "
                      f"one of: {', '.join(ATTACK_BN)}")
  attack = None
  if entry.reference_attack is not None:
    if params.get("attack") is None:
      raise ConfigError(f"objective '{name}' needs objective.attack, e.g. "
                        "{name: pgd, eps: 8/255, step_size: 2/255, steps: 10}")
    try:
      attack = attacks.build(params["attack"])
    except ConfigError as err:
      raise ConfigError(f"objective.attack: {err}") from None
    if attack.is_identity:
      raise ConfigError(f"objective '{name}' needs an attack with steps >= 1"
                        f" (objective.attack.steps)")
    differs = {k: v for k, v in entry.reference_attack.items()
               if attack.to_dict().get(k) != v}
    if differs and model is not None:
      logging.warning("objective %s runs attack %s; its reference's has %s",
                      name, attack.to_dict(), differs)
  if attack_bn == "train" and (attack is None or attack.name
                               not in entry.train_mode_attacks):
    allowed = [n for n, e in _REGISTRY.items() if e.train_mode_attacks]
    raise ConfigError(
        f"objective.attack_bn='train' is for {' and '.join(allowed)} (their "
        f"reference scripts attack in train mode); {name}'s reference "
        "attacks in eval mode, so drop the flag")
  return entry.factory(model, attack, beta=float(params.get("beta", 0.0)),
                       attack_bn=attack_bn)


def validate(params: Mapping[str, Any]) -> None:
  """``make_objective``'s checks alone (ConfigError for bad ``params``)."""
  make_objective(params, None)


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




# ------------------------------------------------------------- the registry


def _ce_loss(model):
  """CE of the adversarial batch (or the clean one for standard training),
  one train-mode forward pass."""
  def loss_fn(params, batch_stats, x, x_adv, y):
    inputs = x if x_adv is None else x_adv
    logits, new_stats = _apply(model, params, batch_stats, inputs, True)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y))
    key = "accuracy" if x_adv is None else "adv_accuracy"
    return loss, (new_stats, {"loss": loss, key: _accuracy(logits, y)})
  return loss_fn


def _eval_mode_attack(model, attack: attacks.Attack):
  """``(variables, x, y, key) -> x_adv``: ``attack`` against the model with
  BatchNorm in inference mode."""
  def run(variables, x, y, key):
    return attack(lambda z: model.apply(variables, z, train=False), x, y,
                  key)
  return run


def _with_train_mode_attack(model, name: str, attack: attacks.Attack,
                            *, pgd: bool) -> Objective:
  """PGD-AT / FGSM-RS attacking in train mode (``attack_bn='train'``).

  robust_overfitting train_cifar.py (PGD): ``steps`` attack forwards, the
  restart-selection forward, and after the optimizer step a clean forward
  (its train accuracy) that updates the statistics last.
  fast_adversarial train_fgsm.py: one forward at the random start.
  """
  step_size = attack.get("step_size")
  if step_size is None:  # FGSM-RS's default step
    step_size = 1.25 * attack.eps

  def attack_with_stats(params, batch_stats, x, y, key):
    return _train_mode_linf_attack(
        model, params, batch_stats, x, y, key, eps=attack.eps,
        step_size=float(step_size), steps=int(attack.get("steps", 1)),
        random_start=attack.get("start") == "uniform", final_forward=pgd)

  def train_mode_attack(variables, x, y, key):
    return attack_with_stats(variables["params"], variables["batch_stats"],
                             x, y, key)[0]

  def clean_forward(params, batch_stats, x):
    return _apply(model, params, batch_stats, x, True)[1]

  return Objective(name, train_mode_attack, _ce_loss(model),
                   attack_with_stats, clean_forward if pgd else None)


@register("standard", reference_attack=None)
def standard(model, attack, **_) -> Objective:
  """Clean cross-entropy."""
  del attack
  return Objective("standard", None, _ce_loss(model))


@register("pgd_at", reference_attack=dict(name="pgd", loss="ce",
                                            start="uniform"),
          train_mode_attacks=("pgd",))
def pgd_at(model, attack, *, attack_bn: str, **_) -> Objective:
  """Madry et al. 2018: cross-entropy on adversarial examples."""
  if attack_bn == "train":
    if attack.get("norm") != "linf" or attack.get("loss") != "ce":
      raise ConfigError("attack_bn='train' follows train_cifar.py's L-inf "
                        "CE attack; set objective.attack.norm=linf, loss=ce")
    return _with_train_mode_attack(model, "pgd_at", attack, pgd=True)
  return Objective("pgd_at", _eval_mode_attack(model, attack),
                   _ce_loss(model))


@register("fgsm_rs", reference_attack=dict(name="fgsm", start="uniform"),
          train_mode_attacks=("fgsm",))
def fgsm_rs(model, attack, *, attack_bn: str, **_) -> Objective:
  """Wong et al. 2020: cross-entropy on FGSM-RS examples."""
  if attack_bn == "train":
    if attack.get("start") != "uniform":
      raise ConfigError("attack_bn='train' follows train_fgsm.py's random "
                        "start; set objective.attack.start=uniform")
    return _with_train_mode_attack(model, "fgsm_rs", attack, pgd=False)
  return Objective("fgsm_rs", _eval_mode_attack(model, attack),
                   _ce_loss(model))


@register("trades", reference_attack=dict(name="pgd", loss="kl",
                                            start="normal"))
def trades(model, attack, *, beta: float, **_) -> Objective:
  """Zhang et al. 2019 (trades.py): CE(f(x), y) + beta KL(f(x) || f(x'))."""

  def loss_fn(params, batch_stats, x, x_adv, y):
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
    robust = jnp.mean(attacks.kl_divergence(logits, adv_logits))
    loss = natural + beta * robust
    return loss, (stats, {"loss": loss, "natural_loss": natural,
                          "robust_loss": robust,
                          "accuracy": _accuracy(logits, y),
                          "adv_accuracy": _accuracy(adv_logits, y)})
  return Objective("trades", _eval_mode_attack(model, attack), loss_fn)


@register("mart", reference_attack=dict(name="pgd", loss="ce",
                                          start="normal"))
def mart(model, attack, *, beta: float, **_) -> Objective:
  """Wang et al. 2020 (mart.py): boosted CE on x' + beta KL weighted by
  1 - p_y(x)."""

  def loss_fn(params, batch_stats, x, x_adv, y):
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
  return Objective("mart", _eval_mode_attack(model, attack), loss_fn)
