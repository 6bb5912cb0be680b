"""Host input pipeline: gather uint8 rows, place them as global sharded batches.

Training batches are a pure function of ``(seed, step)`` so that a resumed run
sees exactly the batches it would have seen without the interruption. Every
process computes the same global indices and keeps only its own rows; the
global ``jax.Array`` is then assembled with ``sharding.put_global_batch``.
Augmentation happens on device (``augment.random_crop_flip``), not here.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from robustjax import sharding
from robustjax.data.sources import ArraySplit
from robustjax.errors import ConfigError

_PREFETCH = 2  # batches the background thread may run ahead


def host_rows(global_batch_size: int, process_index: int,
              process_count: int) -> slice:
  """The rows of a global batch that one process supplies.

  Process ``p`` of ``P`` owns rows ``[p * B / P, (p + 1) * B / P)``, matching
  the order in which ``jax.make_array_from_process_local_data`` lays out
  process-local data along the ``data`` axis.
  """
  if global_batch_size % process_count:
    raise ConfigError(f"batch size {global_batch_size} does not divide over "
                      f"{process_count} processes; use a multiple of "
                      f"{process_count}")
  per = global_batch_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


def _check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size <= 0:
    raise ConfigError(f"{what} batch size must be positive, got {batch_size}")
  sharding.check_batch_divisible(batch_size, mesh)
  host_rows(batch_size, 0, jax.process_count())  # validates divisibility


class TrainBatches:
  """Shuffled, drop-remainder training batches, deterministic in (seed, step).

  ``steps_per_epoch = N // B``; step ``s`` is in epoch ``s // steps_per_epoch``
  whose order is ``np.random.default_rng([seed, epoch]).permutation(N)``, and
  takes rows ``[(s % steps_per_epoch) * B, +B)`` of it. Within an epoch every
  example appears at most once; the last ``N % B`` of each permutation are
  skipped (a different set each epoch).
  """

  def __init__(self, split: ArraySplit, global_batch_size: int, seed: int,
               mesh: Mesh):
    _check_batch(global_batch_size, mesh, "training")
    if global_batch_size > len(split):
      raise ConfigError(
          f"training batch size {global_batch_size} is larger than the "
          f"{split.name} split ({len(split)} examples); lower the batch size")
    self.split = split
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.mesh = mesh
    self._perm_epoch = None  # cache: one permutation per epoch, not per step
    self._perm = None
    self._perm_lock = threading.Lock()  # batch() may run in the prefetcher

  @property
  def steps_per_epoch(self) -> int:
    return len(self.split) // self.global_batch_size

  def global_indices(self, step: int) -> np.ndarray:
    """int64 ``[B]``: the split rows of global batch ``step``."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, within = divmod(step, self.steps_per_epoch)
    with self._perm_lock:
      if self._perm_epoch != epoch:
        self._perm = np.random.default_rng([self.seed, epoch]).permutation(
            len(self.split))
        self._perm_epoch = epoch
      perm = self._perm
    b = self.global_batch_size
    return perm[within * b:(within + 1) * b]

  def host_batch(self, step: int, process_index: int | None = None,
                 process_count: int | None = None) -> dict[str, np.ndarray]:
    """This process's rows of batch ``step`` as numpy arrays.

    Returns ``{'image': uint8 [B/P, H, W, 3], 'label': int32 [B/P]}``. The
    process arguments default to JAX's and exist so tests can simulate hosts.
    """
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
    idx = self.global_indices(step)[
        host_rows(self.global_batch_size, process_index, process_count)]
    return {"image": self.split.images[idx], "label": self.split.labels[idx]}

  def batch(self, step: int) -> dict[str, jax.Array]:
    """Global batch ``step``: ``{'image': uint8 [B, H, W, 3], 'label': int32 [B]}``,
    sharded over the mesh's ``data`` axis."""
    return sharding.put_global_batch(self.host_batch(step), self.mesh)

  def iterate(self, start_step: int, num_steps: int | None = None
              ) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Yields ``(step, batch(step))`` for ``num_steps`` steps (None: forever).

    A background thread prepares up to two batches ahead, so gathering rows
    and the host-to-device copy overlap with the device's work.
    """
    def steps():
      step = start_step
      while num_steps is None or step < start_step + num_steps:
        yield step, self.batch(step)
        step += 1
    return _prefetch(steps)


def eval_batches(split: ArraySplit, batch_size: int, mesh: Mesh,
                 num_examples: int | None = None
                 ) -> Iterator[dict[str, jax.Array]]:
  """The first ``num_examples`` points of ``split`` in order, in fixed-size batches.

  Yields ``{'image': uint8 [B, H, W, 3], 'label': int32 [B], 'mask': bool [B],
  'index': int32 [B]}`` global arrays sharded over ``data``; ``index`` is each
  row's position in the split (so per-example randomness can be keyed by it,
  independent of the batch size). The last batch is padded to ``B`` with zero
  rows whose ``mask`` is False, so every batch has one compiled shape; callers
  weight metrics by ``mask``.
  """
  _check_batch(batch_size, mesh, "evaluation")
  n = len(split) if num_examples is None else num_examples
  if not 0 < n <= len(split):
    raise ConfigError(f"num_examples={num_examples} must be in [1, "
                      f"{len(split)}] for the {split.name} split; change it")
  rows = host_rows(batch_size, jax.process_index(), jax.process_count())

  def batches():
    for start in range(0, n, batch_size):
      position = np.arange(start, start + batch_size, dtype=np.int32)
      mask = position < n
      idx = np.where(mask, position, 0)  # any valid row; zeroed below
      images = split.images[idx[rows]]
      labels = split.labels[idx[rows]]
      images[~mask[rows]] = 0
      labels[~mask[rows]] = 0
      yield sharding.put_global_batch(
          {"image": images, "label": labels, "mask": mask[rows],
           "index": position[rows]}, mesh)
  return _prefetch(batches)


def _prefetch(make_iter: Callable[[], Iterator], size: int = _PREFETCH
              ) -> Iterator:
  """Runs ``make_iter()`` in a daemon thread, ``size`` items ahead.

  Errors in the thread are re-raised in the consumer. Closing the returned
  generator early (``break``) stops the thread instead of leaking it.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    # Bounded waits so a consumer that went away cannot block us forever.
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for item in make_iter():
        if not put((None, item)):
          return
    except BaseException as e:  # handed to the consumer, re-raised there
      put((e, None))
      return
    put((None, done))

  def consume():
    thread = threading.Thread(target=worker, daemon=True,
                              name="robustjax-prefetch")
    thread.start()
    try:
      while True:
        err, item = q.get()
        if err is not None:
          raise err
        if item is done:
          return
        yield item
    finally:
      stop.set()
      thread.join()

  return consume()


def clean_float_batches(split: ArraySplit, batch_size: int, count: int,
                        seed: int, mesh: Mesh) -> list[jax.Array]:
  """``count`` float batches ``[B, H, W, C]`` in [0, 1] of ``split`` (the
  training order of ``TrainBatches``, no augmentation): what re-estimating
  BatchNorm statistics on clean data needs (interpolation, RWS patching)."""
  from robustjax.data import augment  # local: sibling module
  batches = TrainBatches(split, batch_size, seed, mesh)
  to_float = jax.jit(augment.to_float)
  return [to_float(batches.batch(i)["image"]) for i in range(count)]
