"""What happens to BatchNorm running statistics when weights change.

Interpolation, RiFT and robust weight signatures all make a model whose
weights no longer match the running statistics (``batch_stats``) they
carry. One vocabulary names the choices, and each method accepts the modes
that make sense for it:

==============  =============================================================
``interpolate`` lerp the statistics with the weights' coefficients
                (interpolation; RiFT's final model)
``keep_a``      keep the first model's: interpolation's A, the RWS target
                being patched, RiFT's robust model (its fine-tuning then runs
                BatchNorm in inference mode)
``keep_b``      keep the second model's (interpolation's B)
``recompute``   re-estimate them for the new weights on clean training
                batches (``recompute_batch_stats``)
``average``     RWS's reference rule: normalisation and shortcut tensors and
                all statistics from the mean of the robust models, then
                re-estimated on the corruptions' training data
                (``robustjax.rws.batchnorm``)
``train``       RiFT's reference: the fine-tuning's training-mode passes move
                every layer's statistics to the fine-tuning data
==============  =============================================================
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.errors import ConfigError

MODES = ("interpolate", "keep_a", "keep_b", "recompute", "average", "train")
INTERPOLATION_MODES = ("interpolate", "keep_a", "keep_b", "recompute")
PATCH_MODES = ("keep_a", "recompute", "average")
FINETUNE_MODES = ("train", "keep_a")

# (variables, images [B, H, W, C]) -> batch_stats after one training step.
StatsFn = Callable[[Any, jax.Array], Any]


def check_mode(mode: str, allowed: Sequence[str], key: str) -> str:
  """``mode`` if it is one of ``allowed``, else a one-line ConfigError that
  names the config ``key`` and the modes it takes."""
  if mode not in allowed:
    other = "" if mode not in MODES else (
        f" ('{mode}' is a BatchNorm mode of another method)")
    raise ConfigError(f"{key}='{mode}' is not one of {', '.join(allowed)}"
                      f"{other}")
  return mode


def flax_stats_fn(apply_fn: Callable[..., Any]) -> StatsFn:
  """``(variables, images) -> batch_stats`` after one training-mode forward
  pass of a Flax Linen ``apply`` (e.g. ``model.apply``) on float images
  ``[B, H, W, 3]`` in [0, 1]."""
  def stats(variables, images):
    _, updates = apply_fn(variables, images, train=True,
                          mutable=["batch_stats"])
    return updates["batch_stats"]
  return stats


def recompute_batch_stats(stats_fn: StatsFn, variables: Any,
                          batches: Iterable[Any]) -> Any:
  """Running statistics re-estimated on ``batches``: the cumulative average
  of each batch's statistics weighted by its size, ``sum_i B_i s_i /
  sum_i B_i`` (PyTorch's ``bn_update``: statistics reset, then a momentum
  of ``B / (n + B)`` per batch). The previous statistics leave no trace: in
  training mode each layer normalises with batch statistics.

  Works for any BatchNorm whose training update is an exponential moving
  average ``new = m * old + (1 - m) * batch_stat`` (Flax, PyTorch) without
  knowing ``m``: each batch runs from zero statistics, giving ``(1 - m) *
  batch_stat``, and one extra pass from ones measures ``m``. The per-batch
  statistics are those of the model's own update (Flax's BatchNorm: the
  biased variance; PyTorch's running variance uses the unbiased one).

  Args:
    stats_fn: ``(variables, images) -> batch_stats`` (``flax_stats_fn``).
    variables: ``{"params", "batch_stats"}``.
    batches: float image batches ``[B, H, W, C]`` in [0, 1], at least one.

  Returns:
    A ``batch_stats`` tree like ``variables["batch_stats"]`` (numpy, each
    leaf's dtype; accumulated in float64).
  """
  stats_fn = jax.jit(stats_fn)
  old = variables["batch_stats"]
  zeros = jax.tree.map(jnp.zeros_like, old)
  ones = jax.tree.map(jnp.ones_like, old)
  total, count, keep = None, 0, None
  for images in batches:
    size = int(np.shape(images)[0])
    # From zero statistics one step gives (1 - m) * s_batch.
    scaled = stats_fn(dict(variables, batch_stats=zeros), images)
    if keep is None:
      from_ones = stats_fn(dict(variables, batch_stats=ones), images)
      # (m + (1 - m) s) - (1 - m) s = m; averaged over the leaf against
      # rounding.
      keep = jax.tree.map(lambda o, z: 1.0 - jnp.mean(o - z), from_ones,
                          scaled)
    weighted = jax.tree.map(lambda s: np.asarray(s, np.float64) * size,
                            scaled)
    total = weighted if total is None else jax.tree.map(np.add, total,
                                                         weighted)
    count += size
  if total is None:
    raise ConfigError("re-estimating BatchNorm statistics needs at least "
                      "one batch; set bn_batches > 0")
  return jax.tree.map(
      lambda t, k, o: (t / (count * float(k))).astype(np.asarray(o).dtype),
      total, keep, old)
