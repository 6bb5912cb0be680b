"""The ``autoattack`` task: the AutoAttack cascade on the first
``num_examples`` points of a checkpoint's split (configs/autoattack.py).

Config keys: ``checkpoint_path``, ``step``, ``best``, ``dataset`` (``name,
source, data_dir, split``), ``num_examples`` (0 = all), ``batch_size``,
``chunk_size``, ``autoattack`` (the fields of
``robustjax.attacks.autoattack.AutoAttackConfig``; ``attacks`` as a comma
list, ``eot_iter=0`` for the version's own). Everything is validated before
any attack runs; ``WORKDIR/report.json`` is written at the end.
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging

from robustjax.metrics import MetricWriter, write_report
from robustjax.tasks import common


def autoattack_config(block: Any):
  """The ``autoattack`` config block as a validated ``AutoAttackConfig``."""
  from robustjax.attacks import autoattack  # local: heavy import
  overrides = dict(
      eps=float(block.eps), norm=str(block.norm),
      attacks=tuple(a.strip() for a in str(block.get("attacks", "")).split(
          ",") if a.strip()),
      apgd_steps=int(block.apgd_steps),
      apgd_restarts=int(block.apgd_restarts),
      n_target_classes=int(block.n_target_classes),
      fab_steps=int(block.fab_steps),
      square_queries=int(block.square_queries), seed=int(block.seed))
  if int(block.get("eot_iter", 0)) > 0:
    overrides["eot_iter"] = int(block.eot_iter)
  return autoattack.config_for(str(block.version), **overrides)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the cascade on ``config.checkpoint_path``; returns the report."""
  from robustjax.attacks import autoattack  # local: heavy import
  start = time.time()
  aa_config = autoattack_config(config.autoattack)
  ckpt = common.restore(config, int(config.get("num_examples", 0)))
  n = ckpt.num_examples

  def progress(row):
    logging.info("autoattack %s: robust %.2f%% (%d/%d) %.1f s", row["attack"],
                 100 * row["robust_acc"], row["robust_points"], n,
                 row["seconds"])

  model = ckpt.model
  result = autoattack.run_autoattack(
      lambda v, x, k: model.apply(v, x, train=False), ckpt.variables,
      ckpt.split.images[:n], ckpt.split.labels[:n], aa_config,
      mesh=common.mesh_of(config), batch_size=int(config.batch_size),
      chunk_size=int(config.get("chunk_size",
                                autoattack.DEFAULT_CHUNK_SIZE)),
      on_attack=progress)
  logging.info("%s: clean %.2f%% | autoattack %.2f%% (n=%d)",
               config.checkpoint_path, 100 * result.clean_acc,
               100 * result.robust_acc, n)
  report = dict(result.summary(aa_config),
                checkpoint=str(config.checkpoint_path),
                checkpoint_step=ckpt.step, model=ckpt.spec,
                dataset=str(config.dataset.name),
                split=config.dataset.get("split", "test"),
                seed=aa_config.seed, wall_time_s=round(time.time() - start, 1))
  writer = MetricWriter(workdir)
  writer.write(ckpt.step, {"clean_acc": result.clean_acc,
                           "autoattack_acc": result.robust_acc})
  writer.close()
  write_report(workdir, report)
  return report
