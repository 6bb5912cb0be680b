"""The ``evaluate`` task: clean, attacked and corrupted (OOD) accuracy of a
saved checkpoint (configs/evaluate.py).

Config keys: ``checkpoint_path`` (a workdir or step folder), ``step`` (0 =
newest), ``best`` (read the best checkpoint), ``dataset`` (``name, source,
data_dir, split, classes``), ``eval`` (``num_examples`` (0 = all),
``batch_size``, ``attack``: any registered attack, e.g. ``{name: pgd,
steps: 20}`` or ``{name: apgd-ce, steps: 100}``, ``chunk_size``: steps per
compiled chunk of the attack, 0 = one program), ``seed``, ``ood``
(``corruptions``: a list name or ``none``, ``severities``, ``source``,
``data_dir``, ``num_examples``, ``batch_size``). No model config is needed:
the checkpoint names its model. Writes ``WORKDIR/report.json`` and
``WORKDIR/metrics.jsonl``.
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging

from robustjax import evaluation
from robustjax.errors import ConfigError
from robustjax.metrics import MetricWriter, write_report
from robustjax.tasks import common


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Evaluates ``config.checkpoint_path``; returns the report."""
  start = time.time()
  attack = common.attack(config.eval.attack)
  chunk_size = int(config.eval.get("chunk_size",
                                   evaluation.DEFAULT_CHUNK_SIZE))
  if chunk_size < 0:
    raise ConfigError(f"eval.chunk_size={chunk_size}; use 0 (every attack "
                      "step in one program) or a positive number of steps "
                      "per compiled chunk")
  ood_cfg = common.ood_config(config)
  ckpt = common.restore(config, int(config.eval.num_examples))
  mesh = common.mesh_of(config)
  result = evaluation.evaluate(
      ckpt.model, ckpt.variables, ckpt.split, mesh, attack=attack,
      batch_size=int(config.eval.batch_size), num_examples=ckpt.num_examples,
      seed=int(config.get("seed", 0)), chunk_size=chunk_size)
  logging.info("%s: %s", config.checkpoint_path,
               evaluation.format_accuracies(result))
  report = dict(result, checkpoint=str(config.checkpoint_path),
                checkpoint_step=ckpt.step, model=ckpt.spec,
                split=config.dataset.get("split", "test"), eps=attack.eps,
                attack_config=attack.to_dict(),
                wall_time_s=round(time.time() - start, 1))
  if ood_cfg is not None:
    ood = common.evaluate_ood(ckpt.model, ckpt.variables, ckpt.split, mesh,
                              config, ood_cfg)
    logging.info("%s: %s", config.checkpoint_path,
                 evaluation.format_corruptions(ood, ood_cfg["label"]))
    report.update(ood, ood_list=ood_cfg["label"],
                  wall_time_s=round(time.time() - start, 1))
    result = dict(result, ood_acc=ood["ood_acc"])
  writer = MetricWriter(workdir)
  writer.write(ckpt.step, {k: v for k, v in result.items() if k != "attack"})
  writer.close()
  write_report(workdir, report)
  return report
