"""Patching whole model variables: what happens to BatchNorm.

A signature changes weights; a network with BatchNorm also carries running
statistics (``batch_stats``) measured for the old weights. Three options:

* ``'keep'`` (default): leave the target's statistics. Zero-shot: no data is
  needed, and for VGG-16 without BN (the reference's CIFAR networks) it is
  the only case. The signature's layers may shift the activations the
  statistics describe; re-estimate if accuracy drops.
* ``'recompute'``: re-estimate the statistics for the patched weights on
  data you pass (clean training images by default in the ``rws`` task), as
  ``weightspace.interpolate.recompute_batch_stats`` does.
* ``'average'``: the reference code's ResNet-50 behaviour
  (``model_patching.py``): every BatchNorm tensor at every depth (affine
  ``scale``/``bias`` and the running statistics) is replaced by the
  element-wise mean over the robust models, these tensors are left out of
  the signature, and, when batches are given, the statistics are then
  re-estimated on them (the reference uses corrupted training data) and
  blended ``(1 - blend) * averaged + blend * re-estimated`` (the reference
  blends with its alpha when it is below 1). Not zero-shot: it ships BN
  tensors of the robust models.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import numpy as np

from robustjax.errors import ConfigError
from robustjax.rws import signatures as sig_lib
from robustjax.weightspace import interpolate, trees

BATCH_STATS = ("keep", "recompute", "average")
# Leaves of normalisation layers (the reference's "'bn' in name").
BN_PATTERNS = ("re:(^|/)(bn|norm|final_bn|final_norm)[^/]*/", "re:/bn[^/]*/")


def is_bn(path: str) -> bool:
  return any(trees.match(path, p) for p in BN_PATTERNS)


def _mean(trees_list: Sequence[Any]) -> Any:
  return jax.tree.map(
      lambda *xs: (sum(np.asarray(x, np.float64) for x in xs) / len(xs)
                   ).astype(np.asarray(xs[0]).dtype), *trees_list)


def patch_variables(variables: dict[str, Any],
                    signatures: sig_lib.Signature |
                    Sequence[sig_lib.Signature],
                    coefficients: float | Sequence[float] | None = None, *,
                    batch_stats: str = "keep", stats_fn=None,
                    batches: Iterable[Any] | None = None,
                    robust_variables: Sequence[dict[str, Any]] = (),
                    blend: float = 1.0) -> dict[str, Any]:
  """``{"params", "batch_stats"}`` with the signatures added to ``params``.

  Args:
    variables: the target model's variables.
    signatures, coefficients: as ``signatures.patch``.
    batch_stats: ``'keep'``, ``'recompute'`` or ``'average'`` (module doc).
    stats_fn: ``(variables, images) -> batch_stats`` (e.g.
      ``weightspace.interpolate.flax_stats_fn(model.apply)``), for
      ``'recompute'`` and for ``'average'`` with batches.
    batches: float image batches ``[B, H, W, 3]``.
    robust_variables: the robust models' variables, for ``'average'``.
    blend: for ``'average'`` with batches, the weight of the re-estimated
      statistics (1.0 = use them alone).

  Returns:
    New variables; ``variables`` is not modified.
  """
  if batch_stats not in BATCH_STATS:
    raise ConfigError(f"batch_stats='{batch_stats}' is not one of "
                      f"{', '.join(BATCH_STATS)}")
  sigs = sig_lib._as_list(signatures)  # noqa: SLF001 (same package)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  has_bn = bool(jax.tree.leaves(stats))
  if batch_stats == "average":
    if not robust_variables:
      raise ConfigError("batch_stats='average' needs the robust models' "
                        "variables (robust_variables)")
    for rv in robust_variables:
      trees.check_compatible(params, rv["params"],
                             "the target and a robust model")
    # BN tensors come from the robust average, so the signatures must not
    # also move them (the reference never projects them).
    sigs = [sig_lib.Signature({p: v for p, v in s.tensors.items()
                               if not is_bn(p)}, s.bits,
                              {p: q for p, q in s.quant.items()
                               if not is_bn(p)},
                              {p: c for p, c in s.codes.items()
                               if not is_bn(p)}, s.meta) for s in sigs]
    avg_params = trees.flatten(_mean([rv["params"] for rv in
                                      robust_variables]))
    flat = trees.flatten(params)
    params = trees.unflatten({p: (avg_params[p] if is_bn(p) else v)
                              for p, v in flat.items()})
    if has_bn:
      stats = _mean([rv["batch_stats"] for rv in robust_variables])
  out = {"params": sig_lib.patch(params, sigs, coefficients),
         "batch_stats": stats}
  if has_bn and (batch_stats == "recompute" or
                 (batch_stats == "average" and batches is not None)):
    if stats_fn is None or batches is None:
      raise ConfigError(f"batch_stats='{batch_stats}' needs stats_fn and "
                        "batches to re-estimate the statistics")
    new = interpolate.recompute_batch_stats(stats_fn, out, batches)
    if batch_stats == "average" and blend < 1.0:
      new = jax.tree.map(lambda a, b: ((1 - blend) * np.asarray(a) + blend *
                                       np.asarray(b)).astype(
                                           np.asarray(a).dtype), stats, new)
    out["batch_stats"] = jax.tree.map(np.asarray, new)
  return out
