"""Task arithmetic on parameter trees: deltas, sums, TIES and DARE.

A *task vector* is ``finetuned - base`` (Ilharco et al. 2023,
mlfoundations/task_vectors); it is added back with a coefficient
(``apply``), negated to forget, summed to combine. Two sparsifications make
sums of several deltas interfere less:

* TIES (Yadav et al. 2023, prateeky2806/ties-merging): keep each delta's
  top-``density`` fraction of entries by magnitude, elect one sign per entry
  (the sign of the summed trimmed deltas), and average only the entries that
  agree with it. The reference trims over the whole model flattened into one
  vector (``scope='global'``); mergekit and HF peft trim each tensor
  (``scope='leaf'``).
* DARE (Yu et al. 2024, yule-BUAA/MergeLM): drop each entry with
  probability ``p`` and rescale the survivors by ``1 / (1 - p)``, which
  keeps the delta's expectation.

Only floating-point leaves take part: integer leaves (counters) are copied
from the base in ``apply`` and left out of deltas.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.errors import ConfigError
from robustjax.weightspace import trees


def _floats(tree: Any) -> dict[str, Any]:
  return {k: v for k, v in trees.flatten(tree).items()
          if jnp.issubdtype(v.dtype, jnp.floating)}


def task_vector(finetuned: Any, base: Any) -> dict[str, Any]:
  """``finetuned - base`` over the float leaves (a nested dict)."""
  trees.check_compatible(finetuned, base, "the fine-tuned and base trees")
  fb = trees.flatten(base)
  return trees.unflatten({k: jnp.subtract(v, fb[k])
                          for k, v in _floats(finetuned).items()})


def add(*deltas: Any) -> dict[str, Any]:
  """The leafwise sum of one or more trees of the same structure."""
  if not deltas:
    raise ConfigError("add needs at least one tree")
  for other in deltas[1:]:
    trees.check_compatible(deltas[0], other, "the deltas")
  return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *deltas)


def negate(delta: Any) -> dict[str, Any]:
  """``-delta`` (exact in floating point)."""
  return jax.tree.map(jnp.negative, delta)


def scale(delta: Any, coefficient: float) -> dict[str, Any]:
  """``coefficient * delta``."""
  return jax.tree.map(lambda x: (x * coefficient).astype(x.dtype), delta)


def apply(base: Any, delta: Any, coefficient: float = 1.0) -> dict[str, Any]:
  """``base + coefficient * delta``; leaves of ``base`` missing from
  ``delta`` (integer leaves, or layers left out on purpose) are copied."""
  fd = trees.flatten(delta)
  fb = trees.flatten(base)
  missing = sorted(set(fd) - set(fb))
  if missing:
    raise ConfigError(f"the delta has path {missing[0]} that the base tree "
                      "lacks; build the delta from the same model")
  out = {}
  for path, value in fb.items():
    if path in fd:
      if np.shape(fd[path]) != np.shape(value):
        raise ConfigError(f"shape of {path} differs: delta "
                          f"{np.shape(fd[path])} vs base {np.shape(value)}")
      d = fd[path] if coefficient == 1.0 else fd[path] * coefficient
      out[path] = jnp.add(value, d).astype(value.dtype)
    else:
      out[path] = value
  return trees.unflatten(out)


def _kept(values: Sequence[jax.Array], density: float, scope: str) -> int:
  """How many entries trimming keeps: the ties-merging code's kthvalue rule
  (``int(density * n) + 1``, at most ``n``) over the whole tree, peft's
  ``int(density * n)`` per leaf."""
  n = sum(int(np.size(v)) for v in values)
  k = int(density * n)
  return min(k + 1, n) if scope == "global" else k


def _threshold(values: Sequence[jax.Array], k: int) -> jax.Array:
  """The magnitude of the k-th largest entry (infinity when ``k`` is 0)."""
  flat = jnp.concatenate([jnp.abs(v).ravel() for v in values])
  if k == 0:
    return jnp.asarray(jnp.inf, flat.dtype)
  return jnp.sort(flat)[flat.size - k]


def trim(delta: Any, density: float, scope: str = "global") -> dict[str, Any]:
  """Zeroes all but the largest-magnitude entries of ``delta``.

  ``'global'`` (ties-merging's ``topk_values_mask`` on the flattened model)
  keeps the ``int(density * n) + 1`` largest over the whole tree; ``'leaf'``
  (mergekit / peft) keeps the ``int(density * n)`` largest of each leaf.
  Entries tied with the last kept magnitude are kept too, as the
  reference's ``>=`` threshold does.
  """
  if not 0.0 < density <= 1.0:
    raise ConfigError(f"density={density} must be in (0, 1]")
  if scope not in ("global", "leaf"):
    raise ConfigError(f"trim scope '{scope}' is not 'global' or 'leaf'")
  flat = trees.flatten(delta)
  if scope == "global":
    values = list(flat.values())
    cut = _threshold(values, _kept(values, density, scope))
    return trees.unflatten({k: jnp.where(jnp.abs(v) >= cut, v, 0)
                            for k, v in flat.items()})
  return trees.unflatten({
      k: jnp.where(jnp.abs(v) >= _threshold([v], _kept([v], density, scope)),
                   v, 0) for k, v in flat.items()})


def ties_merge(deltas: Sequence[Any], *, density: float = 0.2,
               scope: str = "global") -> dict[str, Any]:
  """TIES merge of task vectors: trim, elect sign, disjoint mean.

  As ties-merging's code: each trimmed entry's sign is the sign of the
  summed trimmed deltas; where that sum is exactly zero it is the majority
  sign (the sign of the sum of all elected signs over the whole model);
  the merged entry is the mean of the trimmed entries with the elected
  sign (0 where none has it). Returns the merged delta; apply it with
  ``apply(base, merged, lam)`` (the reference searches ``lam`` on
  validation data, e.g. 0.8-2.5).
  """
  if not deltas:
    raise ConfigError("ties_merge needs at least one delta")
  trimmed = [trees.flatten(trim(d, density, scope)) for d in deltas]
  for other in trimmed[1:]:
    trees.check_compatible(trees.unflatten(trimmed[0]),
                           trees.unflatten(other), "the deltas")
  stacks = {path: jnp.stack([t[path] for t in trimmed]) for path in trimmed[0]}
  signs = {path: jnp.sign(jnp.sum(stack, 0)) for path, stack in stacks.items()}
  majority = jnp.sign(sum(jnp.sum(s) for s in signs.values()))
  out = {}
  for path, stack in stacks.items():
    sign = jnp.where(signs[path] == 0, majority, signs[path])
    agree = (jnp.sign(stack) == sign) & (stack != 0)
    total = jnp.sum(jnp.where(agree, stack, 0), 0)
    count = jnp.sum(agree, 0)
    out[path] = jnp.where(count > 0, total / jnp.maximum(count, 1), 0
                          ).astype(stack.dtype)
  return trees.unflatten(out)


def dare(delta: Any, *, p: float, key: jax.Array,
         rescale: bool = True) -> dict[str, Any]:
  """Drops each entry with probability ``p`` and (by default) rescales the
  rest by ``1 / (1 - p)``; leaf ``i`` draws from ``fold_in(key, i)``."""
  if not 0.0 <= p < 1.0:
    raise ConfigError(f"DARE drop rate p={p} must be in [0, 1)")
  flat = trees.flatten(delta)
  out = {}
  for i, (path, v) in enumerate(flat.items()):
    keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - p, v.shape)
    kept = jnp.where(keep, v, 0)
    out[path] = (kept / (1.0 - p)).astype(v.dtype) if rescale else kept
  return trees.unflatten(out)


def layer_distances(a: Any, b: Any, *, relative: bool = True,
                    order: Sequence[str] | None = None) -> dict[str, float]:
  """L2 distance between two models per layer, in depth order.

  ``||B_l - A_l|| / ||A_l||`` when ``relative`` (comparable across layers of
  different size), else ``||B_l - A_l||``; float leaves only.
  """
  trees.check_compatible(a, b)
  fa, fb = _floats(a), trees.flatten(b)
  diff: dict[str, float] = {}
  norm: dict[str, float] = {}
  for path, x in fa.items():
    layer = trees.layer_of(path)
    x64 = np.asarray(x, np.float64)
    diff[layer] = diff.get(layer, 0.0) + float(
        np.sum(np.square(np.asarray(fb[path], np.float64) - x64)))
    norm[layer] = norm.get(layer, 0.0) + float(np.sum(np.square(x64)))
  return {layer: float(np.sqrt(diff[layer]) / (np.sqrt(norm[layer])
                                               if relative and norm[layer] > 0
                                               else 1.0))
          for layer in trees.depth_order(diff, order)}
