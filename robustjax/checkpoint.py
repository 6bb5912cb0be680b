"""Checkpoints: an orbax manager for training runs and ``load`` for notebooks.

Layout of a workdir::

  WORKDIR/checkpoints/<step>/state   params, batch_stats, opt_state, step
  WORKDIR/checkpoints/<step>/meta    JSON: model spec, dataset, config
  WORKDIR/best/<step>/...            the best evaluation so far (same items)

Saves are asynchronous and atomic (orbax writes to a temporary folder and
renames it), so a run killed at any moment leaves only complete checkpoints
and resumes from the newest one. In a multi-process run every process calls
``save`` and ``restore`` (each writes and reads its own shards of the arrays);
orbax writes the JSON ``meta`` and commits the folder from process 0 only.

In a notebook::

  from robustjax import checkpoint
  tree = checkpoint.load("workdirs/quickstart")       # newest step
  tree["params"]["stem"]["conv"]["kernel"].shape

``load`` needs neither the config nor the model class.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from robustjax.errors import ConfigError

STATE = "state"
META = "meta"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"


class Checkpointer:
  """Saves and restores ``{state, meta}`` items of a run under one folder.

  Args:
    directory: the folder holding one sub-folder per step.
    max_to_keep: how many checkpoints to keep (newest first, or best first
      when ``best_metric`` is set).
    best_metric: keep the checkpoints with the highest (``best_mode='max'``)
      value of this metric instead of the newest ones.
    async_save: write in a background thread; call ``wait`` or ``close``.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    best_fn = None
    if best_metric is not None:
      best_fn = lambda metrics: float(metrics[best_metric])  # noqa: E731
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, best_fn=best_fn, best_mode=best_mode,
        keep_checkpoints_without_metrics=False if best_fn else True,
        enable_async_checkpointing=async_save,
        # A kill during a save leaves a temporary folder: drop it on start.
        cleanup_tmp_directories=True, create=True,
        # Multi-process runs: orbax names its cross-process barriers by
        # step, so the latest and the best manager saving the same step
        # would collide ("barrier ... is already ongoing") without a
        # per-folder prefix.
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=os.path.basename(self.directory)))
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE, META))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts saving ``state`` (a pytree of arrays) and ``meta`` (JSON)."""
    self._manager.save(
        step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            META: ocp.args.JsonSave(dict(meta))}),
        metrics=dict(metrics) if metrics is not None else None, force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the state at ``step`` (default newest) onto the shardings of
    ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct`` with shardings)."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(
        step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state)}))[STATE]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _step_dirs(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def has_checkpoint(directory: str) -> bool:
  """Whether ``directory`` holds at least one complete step folder."""
  return bool(_step_dirs(directory))


def resolve(path: str, step: int | None = None, *, best: bool = False) -> str:
  """Finds the step folder meant by ``path``.

  ``path`` may be a workdir, a ``checkpoints``/``best`` folder, or one step
  folder. Raises ``ConfigError`` when nothing is there.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, STATE)):
    return path
  root = path
  sub = BEST_DIR if best else LATEST_DIR
  if os.path.isdir(os.path.join(path, sub)):
    root = os.path.join(path, sub)
  steps = _step_dirs(root)
  if not steps:
    raise ConfigError(
        f"no checkpoint found under {path}; pass a workdir of a finished run "
        f"(it holds {LATEST_DIR}/<step>/) or a step folder")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ConfigError(f"no checkpoint for step {step} under {root}; "
                      f"available steps: {steps}")
  return os.path.join(root, str(step))


def read_meta(path: str, step: int | None = None, *, best: bool = False
              ) -> dict[str, Any]:
  """The JSON metadata saved with a checkpoint (model spec, config, ...)."""
  folder = resolve(path, step, best=best)
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      os.path.join(folder, META))


def _restore_numpy(item_dir: str) -> Any:
  """The arrays saved under ``item_dir`` as numpy, on any machine.

  Restoring as ``np.ndarray`` ignores the saved shardings, so a checkpoint
  written by 4 devices or by several processes (device ids this process does
  not have) opens in a one-device notebook.
  """
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(item_dir).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(item_dir,
                              args=ocp.args.PyTreeRestore(restore_args=args))


def load(path: str, step: int | None = None, *, best: bool = False,
         with_opt_state: bool = False) -> dict[str, Any]:
  """Loads a checkpoint as plain numpy pytrees, for notebooks and tools.

  Args:
    path: a workdir, its ``checkpoints``/``best`` folder, or a step folder.
    step: which step (default: the newest).
    best: read the ``best`` folder of a workdir instead of the newest.
    with_opt_state: also return the optimizer state.

  Returns:
    ``{"params": ..., "batch_stats": ..., "step": int, "meta": dict}``;
    params and batch_stats are nested dicts of ``np.ndarray`` keyed by the
    model's readable module names (e.g. ``params["stem"]["conv"]["kernel"]``
    of shape [3, 3, 3, C]).
  """
  folder = resolve(path, step, best=best)
  restored = _restore_numpy(os.path.join(folder, STATE))
  out = {"params": restored["params"],
         "batch_stats": restored.get("batch_stats", {}),
         "step": int(restored["step"]),
         "meta": read_meta(folder)}
  if with_opt_state:
    out["opt_state"] = restored["opt_state"]
  return out
