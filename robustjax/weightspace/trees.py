"""Parameter trees as flat ``{"stage2/block1/conv2/kernel": array}`` dicts.

Every weight-space operation works on these paths: selection by pattern or by
depth, per-layer coefficients, compatibility checks. A *layer* is the path of
a module, the parent of its leaves (``stage2/block1/conv2`` owns ``kernel``;
``stem/bn`` owns ``scale`` and ``bias``).

Depth order: checkpoints restore dicts with sorted keys, so the order in
which a model created its modules is lost. ``depth_order`` sorts paths by a
rule that fits every model in ``robustjax.models`` (stem first, head last,
numbered parts numerically); ``traced_creation_order`` recovers the exact
order in which a Flax model creates its modules, without computing weights.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from robustjax.errors import ConfigError

SEP = "/"
# Variable collections a full checkpoint path may start with, in the order
# they are reported.
COLLECTIONS = ("params", "batch_stats", "opt_state")
# Top-level names that sit before / after the numbered body of a network.
_FIRST = ("stem", "input", "embed", "features")
_LAST = ("final_bn", "final_norm", "norm", "fc1", "head", "classifier")


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flatten(tree: Any) -> dict[str, Any]:
  """``{"a/b/kernel": leaf}`` for every leaf of a nested-dict pytree.

  Keys follow JAX's traversal order (sorted dict keys); use ``depth_order``
  for the order of the network.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {SEP.join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The nested dict of a ``flatten`` result (inverse of ``flatten``)."""
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split(SEP)
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node[name] = leaf
  return out


def layer_of(path: str) -> str:
  """The module owning a leaf: ``stem/conv/kernel`` -> ``stem/conv``."""
  return path.rsplit(SEP, 1)[0] if SEP in path else path


def _natural(part: str) -> tuple:
  # "block10" after "block9": compare the digit runs as numbers.
  return tuple(int(t) if t.isdigit() else t
               for t in re.split(r"(\d+)", part) if t)


def _depth_key(path: str) -> tuple:
  parts = path.split(SEP)
  collection = 0
  if len(parts) > 1 and parts[0] in COLLECTIONS:
    # A full variables path: weights first, then statistics, each by depth.
    collection = COLLECTIONS.index(parts[0])
    parts = parts[1:]
  top = parts[0]
  rank = 0 if top in _FIRST else 2 if top in _LAST else 1
  last_rank = _LAST.index(top) if rank == 2 else 0
  # Within a numbered body (conv1, bn1, conv2 ...) keep each number's
  # modules together, the norm after its conv (post-activation order; use
  # creation_order for pre-activation networks).
  def part_key(part: str) -> tuple:
    digits = re.findall(r"\d+", part)
    is_norm = "bn" in part or "norm" in part
    return (int(digits[-1]) if digits else -1, is_norm, _natural(part))
  return (collection, rank, last_rank, tuple(part_key(p) for p in parts))


def depth_order(paths: Iterable[str],
                order: Sequence[str] | None = None) -> list[str]:
  """``paths`` sorted from the input to the output of the network.

  Args:
    paths: leaf or layer paths.
    order: layer paths in network order (e.g. from ``creation_order``);
      paths are sorted by the position of their layer in it. Without it a
      naming rule is used: ``stem``/``features`` first, ``head`` last,
      numbered parts by number (``stage2`` before ``stage10``; ``conv1``,
      then ``bn1``, then ``conv2``).
  """
  paths = list(paths)
  if order is None:
    return sorted(paths, key=_depth_key)
  position = {p: i for i, p in enumerate(order)}
  def key(path: str) -> tuple:
    layer = path if path in position else layer_of(path)
    if layer not in position:
      raise ConfigError(f"path {path} is not in the given layer order; pass "
                        "an order computed from the same model")
    return (position[layer], path)
  return sorted(paths, key=key)


def creation_order(variables: Any) -> list[str]:
  """Layer paths in the order a Flax model created them.

  ``variables``: the dict returned by a plain ``model.init`` call, whose
  nested dicts keep insertion order. Restored checkpoints and outputs of JAX
  transforms (``jit``, ``eval_shape``, ``tree.map``) have sorted keys
  instead: use ``traced_creation_order`` there. ``params`` layers come
  first, then layers only other collections have.
  """
  seen: dict[str, None] = {}
  ordered = sorted(variables, key=lambda name: name != "params")

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      for name, child in node.items():
        walk(child, f"{prefix}{SEP}{name}" if prefix else str(name))
    else:
      seen.setdefault(layer_of(prefix), None)

  for name in ordered:
    walk(variables[name], "")
  return list(seen)


def traced_creation_order(init_fn: Callable[[], Any]) -> list[str]:
  """``creation_order`` of ``init_fn()`` (e.g. ``lambda: model.init(key, x,
  train=False)``), traced abstractly: no weights are computed. The order is
  read inside the trace, before JAX rebuilds the output with sorted keys."""
  order: list[str] = []

  def traced():
    variables = init_fn()
    order.extend(creation_order(variables))
    return 0
  jax.eval_shape(traced)
  return order


def layers(tree: Any, order: Sequence[str] | None = None) -> list[str]:
  """The layer (module) paths of ``tree`` in depth order."""
  return depth_order(dict.fromkeys(layer_of(p) for p in flatten(tree)), order)


def match(path: str, pattern: str) -> bool:
  """Whether ``path`` matches ``pattern``.

  ``re:...`` is a regular expression searched in the path; anything else is
  a glob matched against the whole path or against its layer
  (``stage2/*`` matches ``stage2/block1/conv2/kernel``; ``*bn*`` every
  BatchNorm leaf).
  """
  if pattern.startswith("re:"):
    return re.search(pattern[3:], path) is not None
  return (fnmatch.fnmatchcase(path, pattern)
          or fnmatch.fnmatchcase(path, pattern.rstrip(SEP) + SEP + "*"))


def select(tree: Any, include: str | Sequence[str] = "*",
           exclude: str | Sequence[str] = ()) -> dict[str, Any]:
  """The flat leaves whose path matches any ``include`` and no ``exclude``
  pattern (see ``match``). Raises ``ConfigError`` if nothing matches."""
  include = [include] if isinstance(include, str) else list(include)
  exclude = [exclude] if isinstance(exclude, str) else list(exclude)
  flat = flatten(tree)
  out = {p: v for p, v in flat.items()
         if any(match(p, i) for i in include)
         and not any(match(p, e) for e in exclude)}
  if not out:
    raise ConfigError(f"no parameter path matches {include} (minus "
                      f"{exclude}); paths look like {next(iter(flat), '')!r}")
  return out


def select_by_depth(tree: Any, first: int = 0, last: int | None = None,
                    order: Sequence[str] | None = None) -> dict[str, Any]:
  """The leaves of layers ``first..last-1`` counted in depth order (Python
  slice semantics, so ``last=-1`` drops the final layer)."""
  chosen = set(layers(tree, order)[first:last])
  return {p: v for p, v in flatten(tree).items() if layer_of(p) in chosen}


def _shape(leaf: Any) -> tuple[int, ...]:
  # Works for arrays and for jax.ShapeDtypeStruct (checkpoint metadata).
  return tuple(getattr(leaf, "shape", np.shape(leaf)))


def _describe(leaf: Any) -> str:
  return f"{np.dtype(leaf.dtype).name}{list(_shape(leaf))}"


def mismatches(a: Any, b: Any) -> list[str]:
  """Every difference of paths, shapes and dtypes between two trees, one
  line each, in path order (empty when compatible)."""
  fa, fb = flatten(a), flatten(b)
  problems = []
  for path in sorted(set(fa) | set(fb), key=_depth_key):
    if path not in fb:
      problems.append(f"{path}: only in the first tree")
    elif path not in fa:
      problems.append(f"{path}: only in the second tree")
    elif (_shape(fa[path]) != _shape(fb[path])
          or np.dtype(fa[path].dtype) != np.dtype(fb[path].dtype)):
      problems.append(f"{path}: {_describe(fa[path])} vs "
                      f"{_describe(fb[path])}")
  return problems


def check_compatible(a: Any, b: Any, what: str = "the two trees") -> None:
  """Raises ``ConfigError`` unless ``a`` and ``b`` have the same paths,
  shapes and dtypes. The one-line message names the first differing path
  (in depth order) and counts the rest; ``mismatches`` lists them all."""
  problems = mismatches(a, b)
  if problems:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ConfigError(
        f"{what} do not match: first difference at {problems[0]}{more}; "
        "use checkpoints of the same model (name, width, classes)")
