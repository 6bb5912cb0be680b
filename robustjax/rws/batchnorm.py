"""Patching whole model variables: what happens to BatchNorm.

A signature changes weights; a network with BatchNorm also carries running
statistics (``batch_stats``) measured for the old weights. Three of the
modes of ``weightspace.batchnorm`` apply (``PATCH_MODES``):

* ``'keep_a'``: leave the target's statistics and BN tensors. Zero-shot: no
  data and no robust model needed. The signature's layers may shift the
  activations the statistics describe.
* ``'recompute'``: re-estimate the statistics for the patched weights on
  data you pass (clean training images in the ``rws`` task) with
  ``weightspace.batchnorm.recompute_batch_stats``.
* ``'average'``: the reference code's rule for its ResNet-50
  (VITA-Group/Robust_Weight_Signatures ``model_patching.py``, ``tools.py``):

  1. every tensor of a normalisation layer or of a projection shortcut
     (the reference's ``'bn' in key or 'downsample' in key``; robustjax
     names its downsample ``shortcut``), at every depth, becomes the
     element-wise mean over the robust models: BN scale and bias, the
     shortcut conv kernel, and all running statistics;
  2. these tensors are left out of the signatures (never projected);
  3. the running statistics are re-estimated for the patched model on
     ``batches`` (the reference: one pass of the corrupted training data of
     every corruption patched in), as the cumulative average of the
     per-batch statistics weighted by batch size (the reference's
     ``bn_update``; ``weightspace.batchnorm.recompute_batch_stats``);
  4. they are blended ``(1 - blend) * averaged + blend * re-estimated``;
     the reference blends with its ``--alpha`` when it is below 1 and
     otherwise keeps the re-estimated statistics alone (``blend=None``
     derives that alpha from the coefficients, ``reference_alpha``).

  Not zero-shot: it ships the robust models' BN and shortcut tensors and
  needs corrupted data. A BN-free network (the reference's CIFAR VGG-16)
  has none of these tensors, so there all three options give the same
  model.

The ``rws`` task uses ``'average'`` by default; ``patch_variables`` defaults
to ``'keep_a'``, since averaging needs the robust models and data that a call
with a signature alone does not have.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import numpy as np

from robustjax.errors import ConfigError
from robustjax.rws import signatures as sig_lib
from robustjax.weightspace import batchnorm, trees

# Leaves of normalisation layers (the reference's "'bn' in key").
BN_PATTERNS = ("re:(^|/)(bn|norm|final_bn|final_norm)[^/]*/", "re:/bn[^/]*/")
# Leaves of projection shortcuts, conv and BN (the reference's torchvision
# "downsample" module).
SHORTCUT_PATTERNS = ("re:(^|/)shortcut/",)
AVERAGED_PATTERNS = BN_PATTERNS + SHORTCUT_PATTERNS

def is_bn(path: str) -> bool:
  """Whether a params leaf path belongs to a normalisation layer."""
  return any(trees.match(path, p) for p in BN_PATTERNS)


def is_averaged(path: str) -> bool:
  """Whether ``'average'`` replaces this params leaf by the robust models'
  mean: a normalisation layer or a projection shortcut, at any depth."""
  return any(trees.match(path, p) for p in AVERAGED_PATTERNS)


def _mean(trees_list: Sequence[Any]) -> Any:
  """Element-wise mean of equal trees (float64 sum, each leaf's dtype)."""
  return jax.tree.map(
      lambda *xs: (sum(np.asarray(x, np.float64) for x in xs) / len(xs)
                   ).astype(np.asarray(xs[0]).dtype), *trees_list)


def average_robust(variables: dict[str, Any],
                   robust_variables: Sequence[dict[str, Any]]
                   ) -> dict[str, Any]:
  """Step 1 of ``'average'``: ``variables`` with every BN and shortcut
  params leaf, and every running statistic, replaced by the element-wise
  mean over ``robust_variables``; other params leaves are kept.

  Args:
    variables: the target's ``{"params", "batch_stats"}``.
    robust_variables: the robust models' variables, same structure.

  Returns:
    New ``{"params", "batch_stats"}`` (``batch_stats`` the robust mean, or
    ``{}`` for a BN-free model).
  """
  if not robust_variables:
    raise ConfigError("batch_stats='average' needs the robust models' "
                      "variables (robust_variables)")
  flat = trees.flatten(variables["params"])
  chosen = {p: v for p, v in flat.items() if is_averaged(p)}
  # Only the averaged tensors must match: the head, say, may have another
  # class count (transfer to a target trained on other classes).
  robust_flat = [{p: trees.flatten(rv["params"]).get(p) for p in chosen}
                 for rv in robust_variables]
  for rf in robust_flat:
    trees.check_compatible(chosen, rf, "the target and a robust model "
                           "(BN and shortcut tensors)")
  avg = _mean(robust_flat) if chosen else {}
  out_params = trees.unflatten({p: avg.get(p, v) for p, v in flat.items()})
  stats = variables.get("batch_stats", {})
  if jax.tree.leaves(stats):
    for rv in robust_variables:
      trees.check_compatible(stats, rv["batch_stats"],
                             "the target and a robust model (batch_stats)")
    stats = _mean([rv["batch_stats"] for rv in robust_variables])
  return {"params": out_params, "batch_stats": stats}


def reference_alpha(coefficients: Sequence[float]) -> float:
  """The reference's ``--alpha`` for these linear coefficients, capped at 1.

  The reference weights each of K signatures by ``alpha / K`` and applies
  the weight twice, so coefficient ``c_i = (alpha / K)^2`` and ``alpha =
  sum_i sqrt(c_i)`` (``|c_i|`` for a negative coefficient). ``alpha >= 1``
  means the re-estimated statistics are used alone.
  """
  return float(min(1.0, sum(np.sqrt(abs(float(c))) for c in coefficients)))


def patch_variables(variables: dict[str, Any],
                    signatures: sig_lib.Signature |
                    Sequence[sig_lib.Signature],
                    coefficients: float | Sequence[float] | None = None, *,
                    batch_stats: str = "keep_a",
                    stats_fn: batchnorm.StatsFn | None = None,
                    batches: Iterable[Any] | None = None,
                    robust_variables: Sequence[dict[str, Any]] = (),
                    blend: float | None = None) -> dict[str, Any]:
  """``{"params", "batch_stats"}`` with the signatures added to ``params``.

  Args:
    variables: the target model's variables.
    signatures, coefficients: as ``signatures.patch``.
    batch_stats: ``'keep_a'``, ``'recompute'`` or ``'average'`` (module
      doc).
    stats_fn: ``(variables, images) -> batch_stats`` (e.g.
      ``weightspace.batchnorm.flax_stats_fn(model.apply)``), for
      ``'recompute'`` and, on a model with BatchNorm, ``'average'``.
    batches: float image batches ``[B, H, W, 3]``: clean data for
      ``'recompute'``; for ``'average'`` the corrupted training data of
      the corruptions patched in (required on a model with BatchNorm).
    robust_variables: the robust models' variables, for ``'average'``.
    blend: for ``'average'``, the weight of the re-estimated statistics
      against the robust average; None = ``reference_alpha`` of the
      coefficients (1.0 for one signature at coefficient >= 1).

  Returns:
    New variables; ``variables`` is not modified.
  """
  batchnorm.check_mode(batch_stats, batchnorm.PATCH_MODES, "batch_stats")
  sigs = sig_lib.as_list(signatures)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  has_bn = bool(jax.tree.leaves(stats))
  if batch_stats == "average":
    averaged = average_robust(variables, robust_variables)
    params, stats = averaged["params"], averaged["batch_stats"]
    # The averaged tensors come from the robust models, so the signatures
    # must not also move them (the reference never projects them).
    sigs = [_without_averaged(s) for s in sigs]
  out = {"params": sig_lib.patch(params, sigs, coefficients),
         "batch_stats": stats}
  if not has_bn or batch_stats == "keep_a":
    return out
  if stats_fn is None or batches is None:
    raise ConfigError(
        f"batch_stats='{batch_stats}' on a model with BatchNorm needs "
        "stats_fn and batches to re-estimate the statistics (for 'average': "
        "the corruptions' training images)")
  new = batchnorm.recompute_batch_stats(stats_fn, out, batches)
  if batch_stats == "average":
    if blend is None:
      blend = reference_alpha(sig_lib.coefficients_of(sigs, coefficients))
    if blend < 1.0:
      new = jax.tree.map(
          lambda a, b: ((1.0 - blend) * np.asarray(a, np.float64) + blend *
                        np.asarray(b, np.float64)).astype(np.asarray(a).dtype),
          stats, new)
  out["batch_stats"] = jax.tree.map(np.asarray, new)
  return out


def _without_averaged(sig: sig_lib.Signature) -> sig_lib.Signature:
  """``sig`` minus the tensors ``'average'`` takes from the robust mean."""
  keep = [p for p in sig.tensors if not is_averaged(p)]
  return sig_lib.Signature({p: sig.tensors[p] for p in keep}, sig.bits,
                           {p: sig.quant[p] for p in keep if p in sig.quant},
                           {p: sig.codes[p] for p in keep if p in sig.codes},
                           sig.meta)
