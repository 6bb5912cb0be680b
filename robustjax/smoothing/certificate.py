"""The margin certificate of the mixed classifier.

For any standard model ``g``, the mixture's log-probabilities satisfy
``m_y - m_i >= a (p_y - p_i) - (1 - a)`` with ``p = softmax(s_rob h(x))``,
so the mixture predicts ``y`` whenever the robust model's probability
margin ``p_y - max_{i != y} p_i`` exceeds ``(1 - a) / a``, which needs
``a > 1/2`` (the margin is at most 1). ``certified`` marks those points;
the margin condition is a statement about the point it is evaluated at, so
the fraction of certified clean points is a lower bound on the mixture's
clean accuracy whatever ``g`` does. For an adaptive ``a(x)`` whose values
lie in ``[a_min, a_max]``, the certificate at ``a_min`` holds for every
value it takes, since the condition only gets easier as ``a`` grows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def robust_margin(rob_logits: jax.Array, labels: jax.Array, *,
                  rob_scale: float = 1.0) -> jax.Array:
  """``p_y - max_{i != y} p_i`` of ``p = softmax(rob_scale * rob_logits)``.

  Args:
    rob_logits: ``[B, C]`` logits of the robust model.
    labels: ``[B]`` int labels.

  Returns:
    ``[B]`` float32 margins in [-1, 1].
  """
  p = jax.nn.softmax(rob_scale * rob_logits.astype(jnp.float32), -1)
  is_label = jax.nn.one_hot(labels, p.shape[-1], dtype=jnp.bool_)
  p_y = jnp.sum(jnp.where(is_label, p, 0.0), -1)
  return p_y - jnp.max(jnp.where(is_label, -1.0, p), -1)


def required_margin(alpha: jax.Array | float) -> jax.Array:
  """``(1 - a) / a`` where ``a > 1/2``, else ``inf`` (no margin suffices)."""
  a = jnp.asarray(alpha, jnp.float32)
  return jnp.where(a > 0.5, (1.0 - a) / jnp.where(a > 0.5, a, 1.0), jnp.inf)


def certified(rob_logits: jax.Array, labels: jax.Array,
              alpha: jax.Array | float, *, rob_scale: float = 1.0
              ) -> jax.Array:
  """``[B]`` bool: the mixture with weight ``alpha`` (scalar or ``[B]``)
  predicts ``labels`` whatever the standard model outputs, because the
  robust model's margin exceeds ``(1 - a) / a``."""
  return robust_margin(rob_logits, labels, rob_scale=rob_scale) > \
      required_margin(alpha)
