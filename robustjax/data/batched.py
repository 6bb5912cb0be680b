"""The one loop that runs a compiled step over a split.

``map_batches`` applies a per-batch step ``(variables, batch, key) ->
outputs`` to the first N points of a split in fixed-size padded batches
(``eval_batches``: padding rows carry ``mask=False``), and two reductions
sit on top: ``sum_batches`` for steps that return masked sums (accuracies,
losses) and ``collect_rows`` for steps that return one row per example
(logits). Evaluation, the weight-space curves, RWS, RiFT and AutoAttack's
clean passes all run through it. ``example_keys`` keys each example by its
index in the split, so randomised steps give the same result for any batch
size or device count.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from robustjax import sharding
from robustjax.data.pipeline import eval_batches
from robustjax.data.sources import ArraySplit

# (variables, batch, key) -> {name: array}; batch as data.eval_batches.
Step = Callable[[Any, dict[str, jax.Array], Any], Mapping[str, jax.Array]]


def compile_step(fn: Step, mesh, *, keyed: bool = True) -> Step:
  """``fn`` jitted over ``mesh``: variables and key replicated, the batch
  split over ``data``, outputs replicated. ``keyed=False`` for steps that
  take ``key=None``."""
  rep = sharding.replicated(mesh)
  return jax.jit(fn, in_shardings=(rep, sharding.batch_sharded(mesh),
                                   rep if keyed else None),
                 out_shardings=rep)


def map_batches(step: Step, variables: Any, split: ArraySplit, mesh, *,
                batch_size: int, num_examples: int | None = None,
                key: Any = None
                ) -> Iterator[tuple[dict[str, jax.Array],
                                    Mapping[str, jax.Array]]]:
  """``(batch, step(variables, batch, key))`` for each padded batch of the
  first ``num_examples`` points of ``split`` (all when None).

  ``variables`` (any pytree) and ``key`` are put on the mesh once. This is
  the loop under every evaluation; ``sum_batches`` and ``collect_rows``
  reduce it.
  """
  variables = sharding.put_replicated(variables, mesh)
  if key is not None:
    key = sharding.put_replicated(key, mesh)
  for batch in eval_batches(split, batch_size, mesh,
                            num_examples=num_examples):
    yield batch, step(variables, batch, key)


def sum_batches(step: Step, variables: Any, split: ArraySplit, mesh, *,
                batch_size: int, num_examples: int | None = None,
                key: Any = None) -> dict[str, float]:
  """The sum over all batches of each output of ``step`` (whose outputs
  are already masked sums over their batch)."""
  totals: dict[str, float] = {}
  for _, out in map_batches(step, variables, split, mesh,
                            batch_size=batch_size, num_examples=num_examples,
                            key=key):
    for name, value in out.items():
      totals[name] = totals.get(name, 0.0) + float(value)
  return totals


def collect_rows(step: Step, variables: Any, split: ArraySplit, mesh, *,
                 batch_size: int, num_examples: int | None = None,
                 key: Any = None) -> dict[str, np.ndarray]:
  """Each output of ``step`` (one row per example, ``[B, ...]``) for the
  first ``num_examples`` points, padding rows dropped: ``[N, ...]``."""
  rows: dict[str, list[np.ndarray]] = {}
  for batch, out in map_batches(step, variables, split, mesh,
                                batch_size=batch_size,
                                num_examples=num_examples, key=key):
    keep = np.asarray(batch["mask"])
    for name, value in out.items():
      rows.setdefault(name, []).append(np.asarray(value)[keep])
  return {name: np.concatenate(parts) for name, parts in rows.items()}


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """``[B]`` keys ``fold_in(key, index[b])``: one per example, by its place
  in the split."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, index)
