"""The ``smoothing`` task: a fixed-weight output-space mixture of two
checkpoints over a grid of weights ``a`` (configs/smoothing.py).

Config keys: ``checkpoint_std``, ``checkpoint_rob`` (workdirs or step
folders), ``step``, ``best``, ``dataset``, ``alphas`` (the grid, each in
[0, 1]), ``std_scale``, ``rob_scale`` (temperatures), ``num_examples``,
``batch_size``, ``chunk_size``, ``autoattack`` (the block of
configs/autoattack.py plus ``enabled``), ``transfer`` (``enabled`` and the
``attack`` crafted against each base model alone), ``seed``,
``num_devices``. Everything is validated before anything is written; then
one line per ``a``, ``WORKDIR/metrics.jsonl`` (one record per ``a``) and
``WORKDIR/report.json`` with the curve: clean, AutoAttack (per attack),
transfer and worst-case robust accuracy and the certified fraction at each
``a``.
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging

from robustjax.attacks.autoattack import DEFAULT_CHUNK_SIZE
from robustjax.errors import ConfigError
from robustjax.metrics import write_points, write_report
from robustjax.smoothing import evaluate as smoothing_eval
from robustjax.smoothing import mixture
from robustjax.tasks import common
from robustjax.tasks.autoattack import autoattack_config


def attacks_of(config: Any):
  """``(autoattack config or None, transfer attack or None)`` of the
  ``autoattack`` and ``transfer`` blocks, validated."""
  aa = autoattack_config(config.autoattack) if bool(
      config.autoattack.get("enabled", True)) else None
  transfer = common.attack(config.transfer.attack, "transfer.attack") if \
      bool(config.transfer.get("enabled", True)) else None
  return aa, transfer


def evaluator(mixed, std, rob, config: Any, aa, transfer, **kwargs):
  """``smoothing.evaluate.make_evaluator`` for the pair as the config asks:
  AutoAttack, and the transfer attack aimed at each base model alone (the
  robust model's margin at the mixture's own temperature)."""
  sources = smoothing_eval.transfer_sources(std.model, rob.model)
  return smoothing_eval.make_evaluator(
      mixed, std.split, common.mesh_of(config), autoattack_config=aa,
      transfer={} if transfer is None else {
          f"{transfer.label}_std": (sources["std"], transfer),
          f"{transfer.label}_rob": (sources["rob"], transfer)},
      batch_size=int(config.batch_size), num_examples=std.num_examples,
      seed=int(config.get("seed", 0)),
      chunk_size=int(config.get("chunk_size", DEFAULT_CHUNK_SIZE)),
      rob_scale=float(mixed.rob_scale), log=logging.info, **kwargs)


def format_point(point: dict[str, Any]) -> str:
  """``clean X% | autoattack Y% | pgd20_std Z% | ... | worst W% |
  certified C% (n=N)``."""
  parts = [f"clean {100 * point['clean_acc']:.2f}%"]
  if "autoattack_acc" in point:
    parts.append(f"autoattack {100 * point['autoattack_acc']:.2f}%")
  parts += [f"{k} {100 * v:.2f}%" for k, v in point["transfer_acc"].items()]
  parts += [f"worst {100 * point['robust_acc']:.2f}%",
            f"certified {100 * point['certified_frac']:.2f}%"]
  return " | ".join(parts) + f" (n={point['num_examples']})"


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Evaluates the mixture at every ``a`` of ``config.alphas``."""
  start = time.time()
  alphas = [mixture.check_alpha(a) for a in (config.get("alphas") or ())]
  if not alphas:
    raise ConfigError("alphas is empty; give the grid of mixture weights, "
                      "e.g. --config.alphas='(0.0, 0.5, 0.9, 1.0)'")
  std_scale = mixture.check_scale(config.std_scale, "std_scale")
  rob_scale = mixture.check_scale(config.rob_scale, "rob_scale")
  aa, transfer = attacks_of(config)
  std, rob = common.restore_pair(config, int(config.num_examples))
  mixed = mixture.MixedClassifier(std.model, rob.model, std_scale, rob_scale)
  eval_fn = evaluator(mixed, std, rob, config, aa, transfer)

  # Validated: from here on files may be written.
  curve = []
  for a in alphas:
    point = {"alpha": a, **eval_fn(mixture.mixture_variables(
        std.variables, rob.variables, a))}
    logging.info("a %.2f: %s", a, format_point(point))
    curve.append(point)
  report = {
      "checkpoint_std": str(config.checkpoint_std),
      "checkpoint_rob": str(config.checkpoint_rob),
      "model_std": std.spec, "model_rob": rob.spec,
      "std_scale": std_scale, "rob_scale": rob_scale,
      "autoattack": None if aa is None else dict(
          version=aa.version, attacks=list(aa.attack_list()), eps=aa.eps,
          norm=aa.norm, apgd_steps=aa.apgd_steps,
          n_target_classes=aa.n_target_classes),
      "transfer_attack": None if transfer is None else transfer.to_dict(),
      "num_examples": std.num_examples, "curve": curve,
      "wall_time_s": round(time.time() - start, 1)}
  for side, a in (("std", 0.0), ("rob", 1.0)):
    point = next((p for p in curve if p["alpha"] == a), None)
    if point is not None:
      report[f"{side}_clean_acc"] = point["clean_acc"]
      report[f"{side}_robust_acc"] = point["robust_acc"]
  write_points(workdir, curve)
  write_report(workdir, report)
  return report
