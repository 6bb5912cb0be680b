"""Interpolate or add checkpoints on disk, a few leaves at a time.

Loading two checkpoints and mixing them in memory holds three models at
once. Here the inputs are read in groups of leaves of at most ``chunk_bytes``
each (orbax partial restores), mixed, and only the output is kept, so the
peak is about one model plus ``2 * chunk_bytes`` (three chunks for
``add_checkpoints``). Each leaf is restored directly onto ``sharding`` (for
example ``NamedSharding(mesh, P())`` or an FSDP-style spec from a
``sharding_fn``), so on a mesh every device only ever holds its own shards,
and the output is saved with those shardings.

Inputs are anything ``checkpoint.resolve`` accepts (a workdir or a step
folder). The output is a workdir ``OUT/checkpoints/<step>/{state,meta}``
holding ``params``, ``batch_stats`` and ``step`` (no optimizer state), so
``checkpoint.load(OUT)`` and the ``evaluate`` task read it; its meta is the
first input's plus a record of how it was made.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from robustjax import checkpoint
from robustjax.errors import ConfigError
from robustjax.weightspace import batchnorm
from robustjax.weightspace import interpolate as interp
from robustjax.weightspace import trees

COLLECTIONS = ("params", "batch_stats")
ShardingFn = Callable[[str, tuple[int, ...]], jax.sharding.Sharding]


def leaf_metadata(path: str) -> dict[str, jax.ShapeDtypeStruct]:
  """``{"params/stem/conv/kernel": ShapeDtypeStruct, ...}`` of a checkpoint's
  ``params``, ``batch_stats`` and ``step``, read without loading arrays."""
  folder = os.path.join(checkpoint.resolve(path), checkpoint.STATE)
  tree = ocp.PyTreeCheckpointer().metadata(folder).item_metadata.tree
  return {k: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype)
          for k, m in trees.flatten(tree).items()
          if k.split(trees.SEP)[0] in COLLECTIONS + ("step",)}


def _default_sharding(path: str, shape: tuple[int, ...]):
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _chunks(meta: dict[str, jax.ShapeDtypeStruct], chunk_bytes: int
            ) -> list[list[str]]:
  groups, current, size = [], [], 0
  for path, m in meta.items():
    nbytes = int(np.prod(m.shape)) * np.dtype(m.dtype).itemsize
    if current and size + nbytes > chunk_bytes:
      groups.append(current)
      current, size = [], 0
    current.append(path)
    size += nbytes
  return groups + ([current] if current else [])


def _read(folder: str, paths: Sequence[str],
          meta: dict[str, jax.ShapeDtypeStruct],
          sharding_fn: ShardingFn) -> dict[str, jax.Array]:
  item = trees.unflatten(dict.fromkeys(paths, 0))
  restore_args = trees.unflatten({
      p: ocp.ArrayRestoreArgs(sharding=sharding_fn(p, meta[p].shape),
                              global_shape=meta[p].shape, dtype=meta[p].dtype)
      for p in paths})
  out = ocp.PyTreeCheckpointer().restore(folder, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  return trees.flatten(out)


def combine(paths: Sequence[str], out_workdir: str,
            fn: Callable[[str, list[jax.Array]], jax.Array], *,
            record: dict[str, Any], sharding_fn: ShardingFn | None = None,
            chunk_bytes: int = 64 << 20) -> str:
  """Writes ``fn(leaf_path, [leaf of each input])`` for every leaf.

  Args:
    paths: input checkpoints (workdirs or step folders) of one model.
    out_workdir: where the output workdir goes; must not hold a checkpoint.
    fn: mixes one leaf; ``leaf_path`` starts with ``params/``,
      ``batch_stats/`` or is ``step``.
    record: stored under ``meta["weightspace"]``.
    sharding_fn: ``(leaf_path, shape) -> Sharding`` for every leaf read
      (default: the first device).
    chunk_bytes: the most bytes read from each input at a time.

  Returns:
    The output step folder.
  """
  folders = [checkpoint.resolve(p) for p in paths]
  metas = [leaf_metadata(f) for f in folders]
  for path, meta in zip(paths[1:], metas[1:]):
    trees.check_compatible(trees.unflatten(metas[0]), trees.unflatten(meta),
                           f"checkpoints {paths[0]} and {path}")
  ckpt_dir = os.path.join(out_workdir, checkpoint.LATEST_DIR)
  if checkpoint.has_checkpoint(ckpt_dir):
    raise ConfigError(f"{out_workdir} already holds a checkpoint; choose a "
                      "new output folder")
  sharding_fn = sharding_fn or _default_sharding
  meta = metas[0]
  out: dict[str, jax.Array] = {}
  for group in _chunks(meta, chunk_bytes):
    leaves = [_read(os.path.join(f, checkpoint.STATE), group, meta,
                    sharding_fn) for f in folders]
    for path in group:
      out[path] = fn(path, [leaves_i[path] for leaves_i in leaves])
    del leaves  # the inputs of this chunk are no longer referenced
  state = trees.unflatten(out)
  state.setdefault("batch_stats", {})
  step = int(np.asarray(state.get("step", 0)))
  info = checkpoint.read_meta(folders[0])
  info["weightspace"] = dict(record, inputs=[os.path.abspath(f)
                                             for f in folders])
  saver = checkpoint.Checkpointer(ckpt_dir, max_to_keep=1, async_save=False)
  saver.save(step, state, info)
  saver.close()
  return os.path.join(ckpt_dir, str(step))


def interpolate_checkpoints(path_a: str, path_b: str, out_workdir: str,
                            alpha: float, *, batch_stats: str = "interpolate",
                            allow_extrapolation: bool = False,
                            sharding_fn: ShardingFn | None = None,
                            chunk_bytes: int = 64 << 20) -> str:
  """``(1 - alpha) * A + alpha * B`` of two checkpoints, leaf by leaf.

  ``batch_stats``: ``'interpolate'``, ``'keep_a'`` or ``'keep_b'``
  (``batchnorm.MODES``; re-estimating them needs the model and data: load
  the output and use ``batchnorm.recompute_batch_stats``). The step counter
  is A's.
  Returns the output step folder.
  """
  alpha = interp.check_alpha(alpha, allow_extrapolation)
  batchnorm.check_mode(batch_stats, ("interpolate", "keep_a", "keep_b"),
                       "batch_stats")
  t = jnp.float32(alpha)

  def mix(path: str, leaves: list[jax.Array]) -> jax.Array:
    a, b = leaves
    is_stats = path.startswith("batch_stats/")
    if not jnp.issubdtype(a.dtype, jnp.floating) or (
        is_stats and batch_stats == "keep_a"):
      return a
    if is_stats and batch_stats == "keep_b":
      return b
    return interp.lerp_leaf(a, b, t)

  return combine([path_a, path_b], out_workdir, mix,
                 record={"op": "interpolate", "alpha": alpha,
                         "batch_stats": batch_stats},
                 sharding_fn=sharding_fn, chunk_bytes=chunk_bytes)


def add_checkpoints(base: str, plus: str, out_workdir: str, *,
                    minus: str | None = None, coefficient: float = 1.0,
                    sharding_fn: ShardingFn | None = None,
                    chunk_bytes: int = 64 << 20) -> str:
  """``base + coefficient * (plus - minus)`` of the float ``params``, leaf
  by leaf: a task vector ``plus - minus`` applied to ``base`` (with
  ``minus=None``: ``base + coefficient * plus``). BatchNorm statistics and
  the step come from ``base``. Returns the output step folder."""
  paths = [base, plus] + ([minus] if minus is not None else [])

  def mix(path: str, leaves: list[jax.Array]) -> jax.Array:
    b = leaves[0]
    if not path.startswith("params/") or not jnp.issubdtype(b.dtype,
                                                            jnp.floating):
      return b
    delta = leaves[1] - leaves[2] if minus is not None else leaves[1]
    return (b + coefficient * delta).astype(b.dtype)

  return combine(paths, out_workdir, mix,
                 record={"op": "add", "coefficient": float(coefficient),
                         "minus": minus is not None},
                 sharding_fn=sharding_fn, chunk_bytes=chunk_bytes)
