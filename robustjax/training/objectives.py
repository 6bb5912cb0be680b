"""Training objectives: standard CE, PGD-AT, TRADES, MART and FGSM-RS.

Each objective has two halves, so the training step can craft adversarial
inputs *outside* the differentiated loss (no gradient flows through the
attack, and no backward pass of the attack is traced):

  x_adv = objective.attack(variables, x, y, key)      # eval-mode BatchNorm
  loss, aux = objective.loss(params, batch_stats, x, x_adv, y)

Attacks run with BatchNorm in inference mode (running statistics, never
updated; DESIGN.md). The losses run the model in training mode; where the
reference does two forward passes (clean and adversarial), so do we, in the
same order, so BatchNorm statistics see the same batches as in PyTorch.

References (the exact details, from the authors' code):
  PGD-AT  Madry et al. 2018: CE on PGD examples (random start).
  TRADES  Zhang et al. 2019 (yaodongyu/TRADES trades.py): attack maximises
          KL(f(x) || f(x')) from x + 0.001 N(0, I); loss CE(f(x), y) +
          beta * KL(f(x) || f(x_adv)) averaged over the batch.
  MART    Wang et al. 2020 (YisenWang/MART mart.py): attack is CE-PGD from
          x + 0.001 N(0, I); loss BCE-style adversarial term + beta * KL
          weighted by (1 - p_y(x)).
  FGSM-RS Wong et al. 2020: uniform start in the eps ball, one signed step
          of ``step_size`` (10/255 at eps 8/255), projected.
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

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
  """The two halves of a training objective (see the module docstring).

  attack: ``(variables, x, y, key) -> x_adv`` or None for standard training.
  loss: ``(params, batch_stats, x, x_adv, y) -> (loss, (batch_stats,
    metrics))``, differentiable in ``params``.
  """
  name: str
  attack: Callable[..., Array] | None
  loss: Callable[..., tuple[Array, tuple[Any, dict[str, Array]]]]


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


def _apply(model, params, batch_stats, x, train: bool):
  """Model forward; in train mode returns ``(logits, new_batch_stats)``."""
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return model.apply(variables, x, train=False)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=["batch_stats"])
  return logits, updates.get("batch_stats", batch_stats)


def _accuracy(logits: Array, y: Array) -> Array:
  return jnp.mean(jnp.argmax(logits, -1) == y)


def _kl_rows(p_logits: Array, q_logits: Array) -> Array:
  """KL(softmax(p) || softmax(q)) per example, [B], computed in float32."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32))
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32))
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def make_objective(cfg: Any, model) -> Objective:
  """Builds the objective named ``cfg.name`` for a Flax ``model``.

  Config keys: ``name, eps, step_size, steps, beta, random_start`` (PGD-AT
  only; TRADES and MART always start from x + 0.001 N(0, I) as their code).
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

  def eval_logits_fn(variables):
    return lambda z: model.apply(variables, z, train=False)

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
      logits, stats = _apply(model, params, batch_stats, x, True)
      adv_logits, stats = _apply(model, params, stats, x_adv, True)
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
