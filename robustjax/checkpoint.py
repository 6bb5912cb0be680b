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

Failures are one-line ``ConfigError``s: a save that cannot be written (a
full disk) names the previous checkpoint, which stays intact; a checkpoint
whose files are damaged (truncated arrays, metadata that is not JSON) is
named with the other checkpoints of its folder that do load and how to use
one of them.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from robustjax.errors import ConfigError

# What orbax and tensorstore raise for unreadable or unwritable files:
# OSError from the file system, ValueError from tensorstore and JSON
# decoding, RuntimeError from orbax's asynchronous machinery.
_IO_ERRORS = (OSError, ValueError, RuntimeError)
# Reading: orbax also wraps a failed read of a sharded array in a bare
# Exception, so every exception of a restore means unreadable files.
_READ_ERRORS = (Exception,)
_USE_ANOTHER_STEP = ("use one of them with --config.step=N (step=N for "
                     "checkpoint.load)")
# The fallback of a training run whose newest checkpoint is damaged.
RESUME_EARLIER = ("to resume from the newest of them, move the damaged folder "
                  "out of the way and run the same command again")

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
    self._pending = -1  # the newest step handed to save

  def latest_step(self) -> int | None:
    """The newest complete step in the folder (None: none yet)."""
    return self._manager.latest_step()

  def _write_failed(self, step: int, err: BaseException) -> ConfigError:
    """The one-line error for a save that could not be written."""
    steps = [s for s in _step_dirs(self.directory) if s != step]
    kept = (f"the previous checkpoint (step {steps[-1]}) is intact"
            if steps else "no earlier checkpoint exists")
    return ConfigError(
        f"could not write the checkpoint of step {step} in {self.directory} "
        f"({_one_line(err)}); {kept}: free disk space (or fix the folder) and "
        "run the same command to resume")

  def save(self, step: int, state: Any, meta: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts saving ``state`` (a pytree of arrays) and ``meta`` (JSON).

    A step the folder already holds is kept as it is: a run killed after the
    best manager saved step N but before the latest one did resumes from an
    earlier step and reaches N again, with the same state bit for bit."""
    if step in self._manager.all_steps():
      return
    previous, self._pending = self._pending, step
    try:
      self._manager.save(
          step, args=ocp.args.Composite(**{
              STATE: ocp.args.StandardSave(state),
              META: ocp.args.JsonSave(dict(meta))}),
          metrics=dict(metrics) if metrics is not None else None, force=True)
    except _IO_ERRORS as err:
      # orbax finishes the previous asynchronous save before it starts
      # this one, so that save's failure surfaces here.
      failed = previous if 0 <= previous != self.latest_step() else step
      raise self._write_failed(failed, err) from err

  def reached_preemption(self, step: int) -> bool:
    """Whether every host reached JAX's preemption sync point at ``step``
    (multi-process runs; see ``robustjax.preemption``)."""
    return self._manager.reached_preemption(step)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the state at ``step`` (default newest) onto the shardings of
    ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct`` with shardings).

    Raises ConfigError naming the damaged folder, and the checkpoints that
    load, when its files cannot be read."""
    step = self.latest_step() if step is None else step
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(**{
              STATE: ocp.args.StandardRestore(abstract_state)}))[STATE]
    except _READ_ERRORS as err:
      raise damaged(os.path.join(self.directory, str(step)), err,
                    RESUME_EARLIER) from None

  def wait(self) -> None:
    """Blocks until the pending saves are durable (ConfigError if one could
    not be written)."""
    try:
      self._manager.wait_until_finished()
    except _IO_ERRORS as err:
      raise self._write_failed(self._pending, err) from err

  def close(self) -> None:
    """Waits for the pending saves and releases orbax's resources."""
    self.wait()
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


def _one_line(err: BaseException) -> str:
  """``Type: first line of the message``, at most 200 characters."""
  lines = str(err).strip().splitlines()
  return f"{type(err).__name__}: {(lines[0] if lines else '')[:300]}"


def _readable(folder: str) -> bool:
  """Whether a step folder's meta and arrays load."""
  try:
    _read_meta_folder(folder)
    _restore_numpy(os.path.join(folder, STATE))
    return True
  except _READ_ERRORS:
    return False


def damaged(folder: str, err: BaseException, fallback: str,
            item: str = STATE) -> ConfigError:
  """The one-line error for the step folder ``folder`` whose ``item``
  (``state``: the arrays, ``meta``: the JSON) could not be read: which files
  and why, which other checkpoints of its parent load (each is read to
  check), and ``fallback``: how to use one of them."""
  root = os.path.dirname(folder)
  others = [s for s in _step_dirs(root) if str(s) != os.path.basename(folder)
            and _readable(os.path.join(root, str(s)))]
  intact = (f"the other checkpoints in {root} load (steps "
            f"{', '.join(map(str, others))}): {fallback}" if others else
            f"no other checkpoint in {root} loads")
  what = ("its arrays" if item == STATE else "its metadata") + \
      f" ({os.path.join(folder, item)})"
  return ConfigError(f"checkpoint {folder} is damaged: {what} cannot be read "
                     f"({_one_line(err)}); {intact}")


def _read_meta_folder(folder: str) -> dict[str, Any]:
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      os.path.join(folder, META))


def read_meta(path: str, step: int | None = None, *, best: bool = False,
              fallback: str = _USE_ANOTHER_STEP) -> dict[str, Any]:
  """The JSON metadata saved with a checkpoint (model spec, config, ...).

  Raises ConfigError when there is none or it is damaged (``fallback``: the
  message's advice on using another checkpoint)."""
  folder = resolve(path, step, best=best)
  try:
    return _read_meta_folder(folder)
  except _READ_ERRORS as err:
    raise damaged(folder, err, fallback, META) from None


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
  meta = read_meta(folder)
  try:
    restored = _restore_numpy(os.path.join(folder, STATE))
  except _READ_ERRORS as err:
    raise damaged(folder, err, _USE_ANOTHER_STEP) from None
  out = {"params": restored["params"],
         "batch_stats": restored.get("batch_stats", {}),
         "step": int(restored["step"]), "meta": meta}
  if with_opt_state:
    out["opt_state"] = restored["opt_state"]
  return out
