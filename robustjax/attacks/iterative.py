"""What APGD, FAB and Square share: per-example keys and a chunked loop.

Each of these attacks is written as ``init(...) -> state`` plus
``step(state, i) -> state`` where ``i`` is the (traced) iteration number and
``state`` is a dict of per-example arrays. ``run_steps`` runs iterations
``[start, start + count)`` as an unrolled Python loop: XLA:CPU runs
``while`` loops several times slower than straight-line code
(docs/design.md), while unrolling all of APGD's 100 or Square's 5000 iterations
would make compilation take minutes. The AutoAttack driver therefore jits a
*chunk* of a few unrolled iterations, with ``start`` traced so one compiled
program serves every chunk, and calls it from Python; a user who wants one
program can call ``run_steps`` with ``count = steps`` inside their own jit.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from robustjax.errors import ConfigError

State = dict[str, Any]
# ``logits_fn(x, keys) -> [B, C]`` with ``keys`` one PRNG key per example
# ``[B]``: they feed randomised models (EOT), which draw each example's noise
# from its own key; deterministic models ignore them.
KeyedLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def example_keys(key: jax.Array, batch: int) -> jax.Array:
  """A typed key array ``[batch]``: ``key`` itself if it already is one.

  Attacks draw every random number from their example's own key, so a point
  gets the same random start, windows and signs whatever batch or device it
  lands on. A single key is split (then the draws depend on the batch).
  """
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.random.split(key, batch)
  if key.shape != (batch,):
    raise ConfigError(f"key must be one PRNG key or a key array of shape "
                      f"[{batch}] (one per example), got {tuple(key.shape)}")
  return key


def fold_in_each(keys: jax.Array, data: jax.Array | int) -> jax.Array:
  """``fold_in(keys[b], data)`` for every example key."""
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def expand(v: jax.Array, like: jax.Array) -> jax.Array:
  """``[B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``like``."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def where_b(cond: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-example select: ``cond`` is ``[B]``, ``a`` and ``b`` ``[B, ...]``."""
  return jnp.where(expand(cond, a), a, b)


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm over all non-batch axes: ``[B]``."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim))))


def linf_norm(v: jax.Array) -> jax.Array:
  """Per-example Linf norm over all non-batch axes: ``[B]``."""
  return jnp.max(jnp.abs(v), axis=tuple(range(1, v.ndim)))


def lp_norm(v: jax.Array, norm: str) -> jax.Array:
  return linf_norm(v) if norm == "linf" else l2_norm(v)


def run_steps(step: Callable[[State, jax.Array], State], state: State,
              start: jax.Array | int, count: int) -> State:
  """Iterations ``start .. start + count - 1`` of ``step``, unrolled."""
  start = jnp.asarray(start, jnp.int32)
  for t in range(count):
    state = step(state, start + t)
  return state


def chunk_plan(steps: int, chunk: int) -> list[tuple[int, int]]:
  """``[(start, count), ...]`` covering ``range(steps)`` in equal chunks.

  The chunk size is the largest divisor of ``steps`` not above ``chunk``, so
  a single compiled program (one ``count``) covers every chunk.
  """
  size = max(d for d in range(1, max(1, min(chunk, steps)) + 1)
             if steps % d == 0) if steps else 1
  return [(s, size) for s in range(0, steps, size)]
