"""JAX's persistent compilation cache, switched on for every launch.

Compiling an unrolled attack or training step costs seconds to tens of
seconds on a CPU (an AutoAttack cascade on a ResNet-18: 20-40 s per attack),
and a research session runs the same programs again and again: evaluating
many checkpoints of one model, resuming, re-running with another seed. With
the cache on, a program XLA compiled once is read back from disk in the next
process instead of being compiled again. Entries are keyed by the program,
the compiler flags, the jax/jaxlib version and the device kind, so a stale
entry is never used for a different program or machine.

``launch.py`` calls ``enable()`` with ``--compilation_cache`` (default
``DEFAULT_DIR``; an empty value turns it off).
"""

from __future__ import annotations

import importlib.util
import os

import jax

# Under the user's cache folder, not the workdir: entries are shared by runs.
DEFAULT_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "robustjax", "xla")
# Programs that compile faster than this are cheaper to recompile than to
# read back and would only fill the folder (jax's own default is 1 s).
MIN_COMPILE_TIME_S = 1.0
# Older entries are evicted beyond this size (jax's LRU eviction).
MAX_SIZE_BYTES = 4 * 2 ** 30


def enable(directory: str = DEFAULT_DIR, *,
           min_compile_time_s: float = MIN_COMPILE_TIME_S,
           max_size_bytes: int = MAX_SIZE_BYTES) -> str:
  """Turns the persistent cache on in ``directory`` (created if missing).

  Must run before the first program is compiled. Returns the absolute path.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(min_compile_time_s))
  # jax evicts under a file lock from the `filelock` package, which it does
  # not declare (requirements.txt pins it). Without it a size limit makes
  # every cache read and write fail, so the cache then grows unbounded (-1).
  if importlib.util.find_spec("filelock") is None:
    max_size_bytes = -1
  jax.config.update("jax_compilation_cache_max_size", int(max_size_bytes))
  return directory
