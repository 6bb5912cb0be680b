"""The mixed classifier: output-space mixing of a standard and a robust model.

``mix_log_probs`` returns the log of the mixture of the two models' softmax
outputs,

  out(x) = log((1 - a) softmax(s_std g(x)) + a softmax(s_rob h(x))),

computed in float32 as ``logaddexp(log(1 - a) + log_softmax(s_std g),
log(a) + log_softmax(s_rob h))``, so no probability is formed and nothing
underflows unless both experts' probabilities do. ``exp(out)`` sums to one
over the classes, so ``out`` works as logits everywhere: argmax, cross-
entropy and DLR give the mixture's prediction and losses.

``MixedClassifier`` is the fixed-``a`` mixture as a model: its
``apply(variables, x, train=False)`` takes ``{"std", "rob", "alpha"}`` (two
models' variables and the weight) and returns the log-mixture, so
``evaluation.evaluate``, ``curves.make_evaluator`` and AutoAttack take it as
they take any model, and a grid of ``a`` reuses one compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from robustjax.errors import ConfigError


def _safe_log(a: jax.Array) -> jax.Array:
  """``log(a)`` with ``-inf`` at ``a = 0`` and a zero (not NaN) gradient
  there, so a mixture at an endpoint still differentiates."""
  positive = a > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, a, 1.0)), -jnp.inf)


def mix_log_probs(std_logits: jax.Array, rob_logits: jax.Array,
                  alpha: jax.Array | float, *, std_scale: float = 1.0,
                  rob_scale: float = 1.0) -> jax.Array:
  """The log-mixture of two classifiers' softmax outputs.

  Args:
    std_logits: ``[B, C]`` logits of the standard (accurate) model ``g``.
    rob_logits: ``[B, C]`` logits of the robust model ``h``.
    alpha: the robust model's weight ``a`` in [0, 1]: a scalar or ``[B]``.
    std_scale, rob_scale: positive temperatures multiplying each model's
      logits before its softmax.

  Returns:
    ``[B, C]`` float32 log-probabilities of the mixture; ``a = 0`` gives
    ``log_softmax(s_std g)`` and ``a = 1`` gives ``log_softmax(s_rob h)``.
  """
  if std_logits.shape != rob_logits.shape:
    raise ConfigError(f"the two models' logits differ in shape: "
                      f"{tuple(std_logits.shape)} and "
                      f"{tuple(rob_logits.shape)}")
  a = jnp.asarray(alpha, jnp.float32)
  if a.ndim == 1:
    a = a[:, None]
  log_std = jax.nn.log_softmax(std_scale * std_logits.astype(jnp.float32), -1)
  log_rob = jax.nn.log_softmax(rob_scale * rob_logits.astype(jnp.float32), -1)
  return jnp.logaddexp(_safe_log(1.0 - a) + log_std, _safe_log(a) + log_rob)


def check_alpha(alpha: float, what: str = "a") -> float:
  """``alpha`` as a float, or a one-line ConfigError if outside [0, 1]."""
  try:
    value = float(alpha)
  except (TypeError, ValueError):
    raise ConfigError(f"{what}={alpha!r} is not a number") from None
  if not 0.0 <= value <= 1.0:
    raise ConfigError(f"{what}={value} is outside [0, 1]; the mixture weight "
                      "of the robust model is a probability")
  return value


def check_scale(scale: float, what: str) -> float:
  """A positive temperature, or a one-line ConfigError."""
  value = float(scale)
  if not value > 0.0:
    raise ConfigError(f"{what}={value} must be positive")
  return value


@dataclasses.dataclass(frozen=True)
class MixedClassifier:
  """The fixed-weight mixture of ``std_model`` and ``rob_model`` as a model.

  ``apply(variables, x [B, H, W, C], train=False) -> [B, C]`` log-mixture,
  with ``variables = {"std": ..., "rob": ..., "alpha": a}``; both base
  models always run in inference mode (BatchNorm running statistics).
  """
  std_model: Any
  rob_model: Any
  std_scale: float = 1.0
  rob_scale: float = 1.0

  def apply(self, variables: Mapping[str, Any], x: jax.Array,
            train: bool = False) -> jax.Array:
    del train  # the base models are frozen: always inference mode
    std = self.std_model.apply(variables["std"], x, train=False)
    rob = self.rob_model.apply(variables["rob"], x, train=False)
    return mix_log_probs(std, rob, variables["alpha"],
                         std_scale=self.std_scale, rob_scale=self.rob_scale)

  def both_logits(self, variables: Mapping[str, Any], x: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """``(g(x), h(x))``, each ``[B, C]``: the two base models' logits."""
    return (self.std_model.apply(variables["std"], x, train=False),
            self.rob_model.apply(variables["rob"], x, train=False))


def mixture_variables(std_variables: Mapping[str, Any],
                      rob_variables: Mapping[str, Any],
                      alpha: float) -> dict[str, Any]:
  """``MixedClassifier``'s variables: ``{"std", "rob", "alpha"}`` (``alpha``
  a float32 scalar array, so every ``a`` shares one compiled program)."""
  return {"std": std_variables, "rob": rob_variables,
          "alpha": jnp.float32(check_alpha(alpha))}
