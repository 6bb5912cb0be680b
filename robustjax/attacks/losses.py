"""Per-example attack losses on logits.

Every loss maps logits ``[B, C]`` and integer labels ``[B]`` to a per-example
value ``[B]``. Untargeted attacks MAXIMISE these values. They are plain jnp
functions, so they work under ``jit``, ``grad`` and sharded batches (nothing
mixes examples).

Why several losses: cross-entropy saturates on confident models and can hide
adversarial examples; the margin (Carlini & Wagner) and DLR (Croce & Hein 2020)
losses do not, and DLR is also invariant to shifting and rescaling the logits.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from robustjax.errors import ConfigError

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _label_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``logits[b, labels[b]]``: shape ``[B]``."""
  return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32),
                             axis=-1)[:, 0]


def _max_other_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``max_{j != labels[b]} logits[b, j]``: shape ``[B]``.

  The label's own logit is replaced by -inf rather than subtracting a large
  constant, so the result is exact for any logit scale; ``where`` sends a zero
  gradient to the masked entry.
  """
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  return jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)


def _check_logits(name: str, logits: jax.Array, labels: jax.Array,
                  min_classes: int) -> None:
  # Shapes are static, so these checks run once at trace time, also under jit.
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ConfigError(
        f"{name}: expected logits [B, C] and labels [B], got "
        f"{tuple(logits.shape)} and {tuple(labels.shape)}")
  if logits.shape[-1] < min_classes:
    raise ConfigError(
        f"{name}: needs at least {min_classes} classes, got "
        f"{logits.shape[-1]}; use loss='ce' or 'cw' for fewer classes")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy ``-log softmax(z)_y``.

  Args:
    logits: ``[B, C]`` float.
    labels: ``[B]`` int class indices.

  Returns:
    ``[B]`` float32 losses (computed in float32 even for low-precision logits,
    so the attack gradient does not underflow).
  """
  _check_logits("cross_entropy", logits, labels, 1)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -_label_logit(logp, labels)


def cw_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Carlini-Wagner margin ``max_{j != y} z_j - z_y``.

  Positive exactly when the example is misclassified. Not clamped at a
  confidence ``kappa``: an attack keeps pushing past the decision boundary,
  which is what the restart selection and the closed-form tests expect.

  Args:
    logits: ``[B, C]`` float, ``C >= 2``.
    labels: ``[B]`` int class indices.

  Returns:
    ``[B]`` float32 margins.
  """
  _check_logits("cw_margin", logits, labels, 2)
  z = logits.astype(jnp.float32)
  return _max_other_logit(z, labels) - _label_logit(z, labels)


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of Logits Ratio (Croce & Hein 2020), untargeted.

  ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` where ``pi`` sorts
  the logits of each example in descending order. The denominator makes the
  loss invariant to shifting and positively rescaling the logits.

  Args:
    logits: ``[B, C]`` float, ``C >= 3``.
    labels: ``[B]`` int class indices.

  Returns:
    ``[B]`` float32 losses, positive exactly when the example is misclassified.
  """
  _check_logits("dlr", logits, labels, 3)
  z = logits.astype(jnp.float32)
  top = jax.lax.top_k(z, 3)[0]  # [B, 3], descending; differentiable
  margin = _label_logit(z, labels) - _max_other_logit(z, labels)
  return -margin / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: jax.Array, labels: jax.Array,
                 targets: jax.Array) -> jax.Array:
  """Targeted DLR (Croce & Hein 2020), as used by APGD-T.

  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. A targeted attack
  MAXIMISES this value: it grows as the target logit overtakes the true one.

  Args:
    logits: ``[B, C]`` float, ``C >= 4``.
    labels: ``[B]`` int true classes.
    targets: ``[B]`` int target classes.

  Returns:
    ``[B]`` float32 losses.
  """
  _check_logits("targeted_dlr", logits, labels, 4)
  if targets.shape != labels.shape:
    raise ConfigError(
        f"targeted_dlr: targets shape {tuple(targets.shape)} must equal "
        f"labels shape {tuple(labels.shape)}")
  z = logits.astype(jnp.float32)
  top = jax.lax.top_k(z, 4)[0]  # [B, 4], descending
  diff = _label_logit(z, labels) - _label_logit(z, targets)
  return -diff / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


# Untargeted losses by the names configs use.
def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """``KL(softmax(p) || softmax(q))`` per example, ``[B]``, in float32.

  TRADES's attack maximises it with ``p`` the clean logits (held fixed) and
  ``q`` the logits at the attacked point; its loss uses it too.
  """
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32))
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32))
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "cw": cw_margin,
    "dlr": dlr,
}
