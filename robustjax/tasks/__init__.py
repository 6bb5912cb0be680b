"""The tasks ``launch.py`` runs, by ``config.task``: one module each.

==============  ===========================================================
``train``       train and evaluate a model (``training.train_and_evaluate``)
``evaluate``    clean, attacked and corrupted accuracy of a checkpoint
``autoattack``  the AutoAttack cascade on a checkpoint
``interpolate`` the path between two checkpoints: curve, loss barriers
``rift``        RiFT fine-tuning of a robust checkpoint
``rws_finetune`` fine-tune from a shared start (theta_pre) for RWS
``rws``         extract, patch and analyse robust weight signatures
``import_torch`` a PyTorch / RobustBench checkpoint file -> a workdir
``export_torch`` a checkpoint -> a PyTorch state_dict file
``smoothing``   a fixed-weight output mixture of two checkpoints over a grid
``smoothing_train`` train an adaptive mixture's mixing network
``smoothing_adaptive`` evaluate an adaptive mixture, attacked end to end
==============  ===========================================================

Each module has ``run(config, workdir) -> report``: it validates the
config (nothing is written before that passes), calls the library with
plain arguments, writes ``WORKDIR/report.json`` and returns the report.
``run`` holds the workdir while a task runs (``robustjax.workdir``): one run
per workdir, and a task never writes over another task's outputs.
``common.py`` holds what the checkpoint-reading tasks share. A task defined
elsewhere joins with ``@register("name")``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from robustjax.errors import ConfigError

TaskFn = Callable[[Any, str], dict[str, Any]]
_REGISTERED: dict[str, TaskFn] = {}
# Modules of this package that are not tasks.
_HELPERS = ("common",)
# Tasks that resume from the checkpoints in their own workdir: they accept a
# workdir with outputs but no task.json (the training loop then checks that
# its checkpoints are of the same model).
_RESUMING = ("train", "rws_finetune")


def register(name: str) -> Callable[[TaskFn], TaskFn]:
  """Decorator making ``fn(config, workdir) -> report`` the task ``name``."""
  def wrap(fn: TaskFn) -> TaskFn:
    _REGISTERED[name] = fn
    return fn
  return wrap


def available_tasks() -> list[str]:
  """The built-in task modules and the registered tasks, sorted."""
  builtin = [m.name for m in pkgutil.iter_modules(__path__)
             if m.name not in _HELPERS]
  return sorted(set(builtin) | set(_REGISTERED))


def get(name: str) -> TaskFn:
  """The ``run`` function of task ``name`` (imports its module on use, so
  one task does not pay for another's imports)."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name not in available_tasks():
    raise ConfigError(f"unknown task '{name}'; choose one of: "
                      f"{', '.join(available_tasks())}")
  return importlib.import_module(f"{__name__}.{name}").run


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs ``config.task`` (default ``train``) in ``workdir``, holding the
  workdir meanwhile (``robustjax.workdir.hold``)."""
  from robustjax import workdir as workdir_lib  # local: keeps imports light
  name = str(config.get("task", "train"))
  fn = get(name)
  with workdir_lib.hold(workdir, name, adopt_unmarked=name in _RESUMING):
    return fn(config, workdir)
