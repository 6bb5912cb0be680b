"""The tasks ``launch.py`` can run, by ``config.task``.

``train``     train_and_evaluate(config, workdir): training + evaluation.
``evaluate``  clean and PGD accuracy of a saved checkpoint (no model config
              needed: the checkpoint names its model).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging

from robustjax import checkpoint, data, evaluation, sharding
from robustjax.errors import ConfigError
from robustjax.metrics import MetricWriter, write_report

TaskFn = Callable[[Any, str], dict[str, Any]]
_TASKS: dict[str, TaskFn] = {}


def register(name: str) -> Callable[[TaskFn], TaskFn]:
  def wrap(fn: TaskFn) -> TaskFn:
    _TASKS[name] = fn
    return fn
  return wrap


def available_tasks() -> list[str]:
  return sorted(_TASKS)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs ``config.task`` (default ``train``) in ``workdir``."""
  name = config.get("task", "train")
  if name not in _TASKS:
    raise ConfigError(f"unknown task '{name}'; choose one of: "
                      f"{', '.join(available_tasks())}")
  return _TASKS[name](config, workdir)


@register("train")
def _train(config: Any, workdir: str) -> dict[str, Any]:
  from robustjax.training import train_and_evaluate  # local: heavy import
  return train_and_evaluate(config, workdir)


@register("evaluate")
def evaluate_checkpoint(config: Any, workdir: str) -> dict[str, Any]:
  """Clean and adversarial accuracy of ``config.checkpoint_path``.

  Config keys: ``checkpoint_path`` (a workdir or step folder), ``step``
  (0 = newest), ``best`` (read the best checkpoint), ``dataset`` (``name,
  source, data_dir, split``), ``eval`` (``num_examples`` (0 = all),
  ``batch_size``, ``attack``), ``seed``. Writes ``WORKDIR/report.json``.
  """
  from robustjax.training.loop import build_model  # local: heavy import
  start = time.time()
  if not config.get("checkpoint_path"):
    raise ConfigError("set --config.checkpoint_path to a training workdir or "
                      "a checkpoint step folder")
  evaluation.validate_attack(config.eval.attack)
  step = int(config.get("step", 0)) or None
  restored = checkpoint.load(config.checkpoint_path, step,
                             best=bool(config.get("best", False)))
  spec = restored["meta"]["model"]
  ds = config.dataset
  split = data.load_split(ds.name, ds.get("split", "test"), source=ds.source,
                          data_dir=ds.get("data_dir") or None)
  if split.num_classes != spec["num_classes"]:
    raise ConfigError(
        f"the checkpoint's model has {spec['num_classes']} classes but "
        f"dataset '{ds.name}' has {split.num_classes}; evaluate it on the "
        "dataset it was trained on")
  mesh = sharding.make_mesh(config.get("num_devices") or None)
  model = build_model(spec)
  variables = {"params": restored["params"],
               "batch_stats": restored["batch_stats"]}
  result = evaluation.evaluate(
      model, variables, split, mesh, attack_cfg=config.eval.attack,
      batch_size=int(config.eval.batch_size),
      num_examples=int(config.eval.num_examples) or None,
      seed=int(config.get("seed", 0)))
  logging.info("%s: %s", config.checkpoint_path,
               evaluation.format_accuracies(result))
  report = dict(result, checkpoint=str(config.checkpoint_path),
                checkpoint_step=restored["step"], model=spec,
                split=ds.get("split", "test"), eps=float(config.eval.attack.eps),
                wall_time_s=round(time.time() - start, 1))
  writer = MetricWriter(workdir)
  writer.write(restored["step"], {k: v for k, v in result.items()
                                  if k != "attack"})
  writer.close()
  write_report(workdir, report)
  return report
