"""Analyses of signatures: depth profile, similarity, storage; their plots.

Functions of params trees and ``Signature`` objects only (no model, no
data); the ``rws`` task adds the accuracy curves. Plots use matplotlib's
Agg backend, imported lazily.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from robustjax.errors import ConfigError
from robustjax.rws.signatures import Signature
from robustjax.weightspace import trees


def depth_profile(clean: Any, robust: Any,
                  order: Sequence[str] | None = None
                  ) -> dict[str, dict[str, float]]:
  """Per layer (depth order), ``||theta_c - theta_std||`` (``abs``) and
  that over ``||theta_std||`` (``rel``). With a shared theta_pre this is
  ``||delta_c - delta_s||``, the quantity the paper's "robustness lives in
  shallow layers" claim is about. Float leaves only."""
  trees.check_compatible(clean, robust, "the clean and robust models")
  fc, fr = trees.flatten(clean), trees.flatten(robust)
  diff: dict[str, float] = {}
  norm: dict[str, float] = {}
  for path, x in fc.items():
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
      continue
    layer = trees.layer_of(path)
    x64 = np.asarray(x, np.float64)
    diff[layer] = diff.get(layer, 0.0) + float(
        np.sum(np.square(np.asarray(fr[path], np.float64) - x64)))
    norm[layer] = norm.get(layer, 0.0) + float(np.sum(np.square(x64)))
  return {layer: {"abs": float(np.sqrt(diff[layer])),
                  "rel": float(np.sqrt(diff[layer]) /
                               max(np.sqrt(norm[layer]), 1e-30))}
          for layer in trees.depth_order(diff, order)}


def _vector(sig: Signature, paths: Sequence[str]) -> np.ndarray:
  return np.concatenate([sig.tensors[p].astype(np.float64).ravel()
                         for p in paths])


def cosine(a: Signature, b: Signature) -> float:
  """Cosine similarity of two signatures over their common paths (each
  flattened and concatenated in depth order)."""
  paths = [p for p in a.paths if p in b.tensors]
  if not paths:
    raise ConfigError(f"signatures '{a.name()}' and '{b.name()}' share no "
                      "layer; extract them with the same layer selection")
  x, y = _vector(a, paths), _vector(b, paths)
  den = np.linalg.norm(x) * np.linalg.norm(y)
  return float(np.dot(x, y) / den) if den > 0 else 0.0


def similarity_matrix(sigs: Sequence[Signature]) -> np.ndarray:
  """``[K, K]`` cosine similarities between signatures."""
  k = len(sigs)
  out = np.eye(k)
  for i, j in itertools.combinations(range(k), 2):
    out[i, j] = out[j, i] = cosine(sigs[i], sigs[j])
  return out


def storage(sig: Signature, params: Any,
            file_bytes: int | None = None) -> dict[str, Any]:
  """How small the signature is next to the full model.

  ``ratio_params``: full-model parameters over signature parameters;
  ``ratio_bits``: full float32 model bits over the signature's payload
  bits (``bits`` per entry + per-tensor scales); ``ratio_file``: the
  float32 model size over the ``.rws`` file's size (header included).
  """
  full = int(sum(np.size(v) for v in trees.flatten(params).values()))
  out = {"model_params": full, "signature_params": sig.num_params,
         "bits": sig.bits, "signature_payload_bits": sig.storage_bits(),
         "ratio_params": full / sig.num_params,
         "ratio_bits": 32 * full / sig.storage_bits()}
  if file_bytes is not None:
    out["file_bytes"] = int(file_bytes)
    out["ratio_file"] = 4 * full / file_bytes
  return out


# ------------------------------------------------------------------ plots

def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt



def _save(fig, path: str) -> None:
  """Writes ``fig`` to ``path`` (PNG, 120 dpi) and frees it."""
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _plt().close(fig)

def plot_depth_profile(profiles: Mapping[str, Mapping[str, Mapping[str,
                                                                   float]]],
                       path: str, kept: int | None = None) -> None:
  """One line per corruption: relative ``||theta_c - theta_std||`` per
  layer against depth; a dashed line after the ``kept`` first layers."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4))
  names = None
  for corruption, prof in profiles.items():
    names = list(prof)
    ax.plot(range(len(names)), [prof[n]["rel"] for n in names], "o-",
            label=corruption, ms=3)
  if names:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
  if kept:
    ax.axvline(kept - 0.5, ls="--", color="gray", lw=1)
  ax.set_ylabel("||theta_c - theta_clean|| / ||theta_clean||")
  ax.set_title("robust minus clean, per layer (input -> output)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  _save(fig, path)


def plot_similarity(matrix: np.ndarray, names: Sequence[str],
                    path: str) -> None:
  """Heatmap of the cosine similarities, values written in the cells."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
  im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(len(names)))
  ax.set_yticklabels(names, fontsize=8)
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
              fontsize=7)
  fig.colorbar(im, ax=ax)
  ax.set_title("cosine similarity of signatures")
  _save(fig, path)


def plot_scaling(curves: Mapping[str, Sequence[Mapping[str, float]]],
                 path: str) -> None:
  """Per corruption: corrupted (solid) and clean (dashed) accuracy of the
  patched target against the coefficient."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, (corruption, curve) in enumerate(curves.items()):
    color = f"C{i % 10}"
    coefs = [p["coefficient"] for p in curve]
    ax.plot(coefs, [100 * p["corrupted_acc"] for p in curve], "o-",
            color=color, label=f"{corruption} (corrupted)", ms=3)
    ax.plot(coefs, [100 * p["clean_acc"] for p in curve], "--",
            color=color, alpha=0.7)
  ax.set_xlabel("signature coefficient (linear)")
  ax.set_ylabel("accuracy (%)  solid: corrupted, dashed: clean")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  _save(fig, path)
