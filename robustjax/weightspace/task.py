"""The ``interpolate`` task: two checkpoints in, a curve, barrier and plot out.

  python launch.py --config=configs/interpolate.py \
      --config.checkpoint_a=workdirs/standard \
      --config.checkpoint_b=workdirs/fast_at --workdir=workdirs/interp

Everything is validated before the workdir is touched: both checkpoints
exist, hold the same model (paths, shapes and dtypes, read from metadata
only), the alpha grid lies in [0, 1] unless ``allow_extrapolation`` is set,
and the OOD evaluation is available if asked for. Then it evaluates every
point, logs one line per alpha, and writes ``WORKDIR/report.json`` (curve,
barriers, endpoints, optional layer sharpness), ``WORKDIR/metrics.jsonl``
(one record per alpha) and ``WORKDIR/interpolation.png``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import checkpoint, data, evaluation, sharding
from robustjax.errors import ConfigError
from robustjax.metrics import write_points, write_report
from robustjax.weightspace import (arithmetic, curves, interpolate, plots,
                                   sharpness, streaming, trees)


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


def _ood_fn(config: Any, model, mesh):
  """``variables -> {"ood_acc", ...}`` or None when ``ood`` is ``none``."""
  ood = str(config.get("ood", "none") or "none")
  if ood == "none":
    return None
  evaluate_corruptions = getattr(evaluation, "evaluate_corruptions", None)
  if evaluate_corruptions is None:
    raise ConfigError("ood needs robustjax.evaluation.evaluate_corruptions, "
                      "which this checkout lacks; set --config.ood=none")
  from robustjax.data import corruptions  # local: only OOD runs need it
  names = corruptions.resolve(ood)
  severities = tuple(int(s) for s in config.ood_severities)
  ds = config.dataset
  split = data.load_split(ds.name, ds.get("split", "test"), source=ds.source,
                          data_dir=ds.get("data_dir") or None)

  def ood_fn(variables):
    result = evaluate_corruptions(
        model, variables, split, mesh, corruptions=names,
        severities=severities, batch_size=int(config.eval.batch_size),
        num_examples=int(config.ood_num_examples) or None,
        seed=int(config.get("seed", 0)))
    return {k: v for k, v in result.items()
            if k == "ood_acc" or k == "ood_by_corruption"}
  return ood_fn


def _bn_batches(config: Any, mesh):
  """``() -> iterable of float image batches`` from the training split
  (no augmentation), for ``batch_stats='recompute'``."""
  batches = data.clean_float_batches(config.dataset,
                                     int(config.bn_batch_size),
                                     int(config.bn_batches),
                                     int(config.get("seed", 0)), mesh)
  return lambda: iter(batches)


def _sharpness(config: Any, model, variables: dict, split, label: str,
               order: list[str]) -> dict[str, Any]:
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


def _order(model, split) -> list[str]:
  return trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), np.zeros((1, *split.images.shape[1:]), np.float32),
      train=False))


def run_interpolate(config: Any, workdir: str) -> dict[str, Any]:
  """The task body; see the module docstring for what it writes."""
  from robustjax.training.loop import build_model  # local: heavy import
  start = time.time()
  paths = {}
  for side in ("a", "b"):
    path = config.get(f"checkpoint_{side}")
    if not path:
      raise ConfigError(f"set --config.checkpoint_{side} to a training workdir "
                        "or a checkpoint step folder")
    paths[side] = checkpoint.resolve(path, best=bool(config.get("best")))
  alphas = alpha_grid(config)
  bn_mode = str(config.batch_stats)
  if bn_mode not in interpolate.BATCH_STATS:
    raise ConfigError(f"batch_stats='{bn_mode}' is not one of "
                      f"{', '.join(interpolate.BATCH_STATS)}")
  evaluation.validate_attack(config.eval.attack)
  meta_a, meta_b = (streaming.leaf_metadata(paths[s]) for s in ("a", "b"))
  trees.check_compatible(trees.unflatten(meta_a), trees.unflatten(meta_b),
                         "checkpoint_a and checkpoint_b")
  spec = checkpoint.read_meta(paths["a"])["model"]
  spec_b = checkpoint.read_meta(paths["b"])["model"]
  if spec != spec_b:
    raise ConfigError(f"checkpoint_a holds model {spec} but checkpoint_b "
                      f"holds {spec_b}; interpolate two runs of one model")
  ds = config.dataset
  split = data.load_split(ds.name, ds.get("split", "test"), source=ds.source,
                          data_dir=ds.get("data_dir") or None)
  if split.num_classes != spec["num_classes"]:
    raise ConfigError(f"the checkpoints' model has {spec['num_classes']} "
                      f"classes but dataset '{ds.name}' has "
                      f"{split.num_classes}; use the dataset they were "
                      "trained on")
  mesh = sharding.make_mesh(config.get("num_devices") or None)
  model = build_model(spec)
  ood_fn = _ood_fn(config, model, mesh)

  # Validated: from here on files may be written.
  loaded = {s: checkpoint.load(paths[s]) for s in ("a", "b")}
  variables = {s: {"params": loaded[s]["params"],
                   "batch_stats": loaded[s]["batch_stats"]}
               for s in ("a", "b")}
  eval_fn = curves.make_evaluator(
      model, split, mesh, attack_cfg=config.eval.attack,
      batch_size=int(config.eval.batch_size),
      num_examples=int(config.eval.num_examples) or None,
      seed=int(config.get("seed", 0)), ood_fn=ood_fn)
  recompute = bn_mode == "recompute"
  order = _order(model, split)
  curve = curves.interpolation_curve(
      eval_fn, variables["a"], variables["b"], alphas,
      batch_stats=bn_mode,
      stats_fn=interpolate.flax_stats_fn(model.apply) if recompute else None,
      bn_batches=_bn_batches(config, mesh) if recompute else None,
      order=order,
      allow_extrapolation=bool(config.get("allow_extrapolation", False)),
      log=logging.info)

  report: dict[str, Any] = {
      "checkpoint_a": paths["a"], "checkpoint_b": paths["b"], "model": spec,
      "batch_stats": bn_mode, "attack": evaluation.attack_name(
          config.eval.attack), "eps": float(config.eval.attack.eps),
      "curve": curve}
  for kind in ("clean", "adv"):
    if f"{kind}_loss" in curve[0] and 0.0 in alphas and 1.0 in alphas:
      barrier = curves.loss_barrier(alphas, [p[f"{kind}_loss"] for p in curve])
      report[f"{kind}_barrier"] = barrier
      logging.info(
          "%s loss barrier %.4f over the endpoint mean (peak at alpha %.2f), "
          "%.4f over the chord between the endpoints", kind,
          barrier["barrier"], barrier["argmax_alpha"],
          barrier["barrier_linear"])
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
