"""The ``interpolate`` task: two checkpoints in, a curve, barriers and a plot
out (configs/interpolate.py).

  python launch.py --config=configs/interpolate.py \
      --config.checkpoint_a=workdirs/standard \
      --config.checkpoint_b=workdirs/fast_at --workdir=workdirs/interp

Everything is validated before the workdir is touched: both checkpoints
exist, hold the same model (paths, shapes and dtypes, read from metadata
only), the alpha grid lies in [0, 1] unless ``allow_extrapolation`` is set,
the attack and the OOD block are valid. Then it evaluates every point, logs
one line per alpha, and writes ``WORKDIR/report.json`` (curve, barriers,
endpoints, optional layer sharpness), ``WORKDIR/metrics.jsonl`` (one record
per alpha) and ``WORKDIR/interpolation.png``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import checkpoint, data, models
from robustjax.errors import ConfigError
from robustjax.metrics import write_points, write_report
from robustjax.tasks import common
from robustjax.weightspace import (arithmetic, batchnorm, curves, interpolate,
                                   plots, sharpness, streaming, trees)


def alpha_grid(config: Any) -> list[float]:
  """``config.alphas`` if set, else ``num_alphas`` points from 0 to 1."""
  alphas = [float(a) for a in (config.get("alphas") or ())]
  if not alphas:
    n = int(config.get("num_alphas", 11))
    if n < 2:
      raise ConfigError(f"num_alphas={n} must be at least 2 (both endpoints)")
    alphas = [float(a) for a in np.linspace(0.0, 1.0, n)]
  for a in alphas:
    interpolate.check_alpha(a, bool(config.get("allow_extrapolation", False)))
  return alphas


def _checkpoints(config: Any) -> tuple[dict[str, str], dict[str, Any]]:
  """Both checkpoint folders and their (shared) model spec, checked from
  metadata alone."""
  paths = {}
  for side in ("a", "b"):
    path = config.get(f"checkpoint_{side}")
    if not path:
      raise ConfigError(f"set --config.checkpoint_{side} to a training workdir "
                        "or a checkpoint step folder")
    paths[side] = checkpoint.resolve(path, best=bool(config.get("best")))
  meta_a, meta_b = (streaming.leaf_metadata(paths[s]) for s in ("a", "b"))
  trees.check_compatible(trees.unflatten(meta_a), trees.unflatten(meta_b),
                         "checkpoint_a and checkpoint_b")
  spec = checkpoint.read_meta(paths["a"])["model"]
  spec_b = checkpoint.read_meta(paths["b"])["model"]
  if models.full_spec(spec) != models.full_spec(spec_b):
    raise ConfigError(f"checkpoint_a holds model {spec} but checkpoint_b "
                      f"holds {spec_b}; interpolate two runs of one model")
  return paths, spec


def _sharpness(config: Any, model, variables: dict, split, label: str,
               order: list[str]) -> dict[str, Any]:
  """Layer-wise sharpness of one endpoint (``config.sharpness``)."""
  cfg = config.sharpness
  n = int(cfg.num_examples)
  images = jax.numpy.asarray(data.to_float(split.images[:n]))
  labels = jax.numpy.asarray(split.labels[:n])
  loss_fn = sharpness.classification_loss_fn(
      model.apply, variables["batch_stats"], images, labels)
  results = sharpness.layer_sharpness(
      loss_fn, variables["params"], rho=float(cfg.rho), norm=cfg.norm,
      adaptive=bool(cfg.adaptive), steps=int(cfg.steps), order=order)
  ranked = sharpness.rank_layers(results, ratio=float(cfg.straggler_ratio))
  logging.info("sharpness at %s: stragglers %s", label, ranked["stragglers"])
  return {"by_layer": {k: v["sharpness"] for k, v in results.items()},
          **ranked}


def _barriers(curve: list[dict[str, Any]], alphas: list[float]
              ) -> dict[str, Any]:
  """``{clean,adv}_barrier`` of the curve (when it has both endpoints)."""
  out = {}
  for kind in ("clean", "adv"):
    if f"{kind}_loss" in curve[0] and 0.0 in alphas and 1.0 in alphas:
      barrier = curves.loss_barrier(alphas, [p[f"{kind}_loss"] for p in curve])
      out[f"{kind}_barrier"] = barrier
      logging.info(
          "%s loss barrier %.4f over the endpoint mean (peak at alpha %.2f), "
          "%.4f over the chord between the endpoints", kind,
          barrier["barrier"], barrier["argmax_alpha"],
          barrier["barrier_linear"])
  return out


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Evaluates the path from ``checkpoint_a`` to ``checkpoint_b``."""
  start = time.time()
  paths, spec = _checkpoints(config)
  alphas = alpha_grid(config)
  bn_mode = batchnorm.check_mode(str(config.batch_stats),
                                 batchnorm.INTERPOLATION_MODES, "batch_stats")
  attack = common.attack(config.eval.attack)
  ood_cfg = common.ood_config(config)
  split = common.load_eval_split(config.dataset)
  if split.num_classes != spec["num_classes"]:
    raise ConfigError(f"the checkpoints' model has {spec['num_classes']} "
                      f"classes but dataset '{config.dataset.name}' has "
                      f"{split.num_classes}; use the dataset they were "
                      "trained on")
  mesh = common.mesh_of(config)
  model = models.build_model(spec)

  # Validated: from here on files may be written.
  variables = {s: common.variables_of(checkpoint.load(paths[s]))
               for s in ("a", "b")}
  ood_fn = None
  if ood_cfg is not None:
    ood_fn = lambda v: {k: x for k, x in common.evaluate_ood(  # noqa: E731
        model, v, split, mesh, config, ood_cfg).items()
        if k in ("ood_acc", "ood_by_corruption")}
  eval_fn = curves.make_evaluator(
      model, split, mesh, attack=attack,
      batch_size=int(config.eval.batch_size),
      num_examples=int(config.eval.num_examples) or None,
      seed=int(config.get("seed", 0)), ood_fn=ood_fn)
  order = common.layer_order(model, split.images.shape[1:])
  recompute = bn_mode == "recompute"
  batches = common.bn_batches(
      config.dataset, int(config.bn_batch_size), int(config.bn_batches),
      int(config.get("seed", 0)), mesh) if recompute else None
  curve = curves.interpolation_curve(
      eval_fn, variables["a"], variables["b"], alphas, batch_stats=bn_mode,
      stats_fn=batchnorm.flax_stats_fn(model.apply) if recompute else None,
      bn_batches=(lambda: iter(batches)) if recompute else None, order=order,
      allow_extrapolation=bool(config.get("allow_extrapolation", False)),
      log=logging.info)

  report: dict[str, Any] = {
      "checkpoint_a": paths["a"], "checkpoint_b": paths["b"], "model": spec,
      "batch_stats": bn_mode, "attack": attack.label, "eps": attack.eps,
      "curve": curve, **_barriers(curve, alphas)}
  for side, t in (("a", 0.0), ("b", 1.0)):
    point = next((p for p in curve if p["alpha"] == t), None)
    for key in ("clean_acc", "adv_acc", "ood_acc"):
      if point is not None and key in point:
        report[f"{side}_{key}"] = point[key]
  report["layer_distance"] = arithmetic.layer_distances(
      variables["a"]["params"], variables["b"]["params"], order=order)
  if bool(config.sharpness.enabled):
    report["sharpness"] = {
        side: _sharpness(config, model, variables[side], split, side, order)
        for side in ("a", "b")}
  report["wall_time_s"] = round(time.time() - start, 1)
  write_points(workdir, curve)
  write_report(workdir, report)
  if jax.process_index() == 0:
    plots.plot_curve(curve, title=f"{spec['name']} w{spec['width']:g}: "
                     "A -> B", path=os.path.join(workdir, "interpolation.png"))
  return report
