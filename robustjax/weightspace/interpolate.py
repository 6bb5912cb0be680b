"""Linear interpolation of two parameter trees, with per-layer coefficients.

``theta(alpha) = (1 - alpha) * A + alpha * B`` leaf by leaf, so ``alpha = 0``
gives A and ``alpha = 1`` gives B exactly. ``alpha`` may be

* a number: the same coefficient everywhere;
* a mapping ``{pattern: alpha}`` of rules (``trees.match`` patterns, first
  match wins, ``"*"`` as the catch-all), e.g. ``{"head/*": 0.0, "*": 0.5}``
  keeps A's classifier and averages the rest;
* a list ``[a0, ..., ak]`` spread linearly across depth: the first layer gets
  ``a0``, the last ``ak``, layers in between the piecewise-linear value at
  their relative depth (mergekit's "gradient" values).

Leaves that are not floating point (step counters, integer buffers) are not
interpolated: they are taken from A, from B, or from the nearer endpoint.
BatchNorm running statistics (the ``batch_stats`` collection) can be
interpolated like weights, kept from one endpoint, or re-estimated on data
for the interpolated weights (``batchnorm.recompute_batch_stats``), which is
what git-re-basin does for its ResNet-50 and what fixes the accuracy
collapse interpolated BN networks often show; the modes are those of
``batchnorm.INTERPOLATION_MODES``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.errors import ConfigError
from robustjax.weightspace import batchnorm, trees

AlphaSpec = float | Mapping[str, float] | Sequence[float]
NON_FLOAT = ("a", "b", "nearest")


def check_alpha(value: float, allow_extrapolation: bool = False) -> float:
  """``value`` as a float; ``ConfigError`` if outside [0, 1] unless
  extrapolation is allowed explicitly."""
  value = float(value)
  if not np.isfinite(value):
    raise ConfigError(f"alpha={value} is not a finite number")
  if not allow_extrapolation and not 0.0 <= value <= 1.0:
    raise ConfigError(
        f"alpha={value:g} is outside [0, 1]; set allow_extrapolation=True "
        "(--config.allow_extrapolation=true) to extrapolate beyond A or B")
  return value


def resolve_alphas(tree: Any, alpha: AlphaSpec, *,
                   order: Sequence[str] | None = None,
                   allow_extrapolation: bool = False) -> dict[str, float]:
  """The coefficient of every leaf path of ``tree`` (see the module doc).

  ``order``: layer paths in network order for list-valued ``alpha``
  (default ``trees.depth_order``'s naming rule).
  """
  flat = trees.flatten(tree)
  if isinstance(alpha, Mapping):
    out = {}
    for path in flat:
      rule = next((p for p in alpha if trees.match(path, p)), None)
      if rule is None:
        raise ConfigError(f"no alpha rule matches {path}; add a catch-all "
                          "rule such as '*': 0.5")
      out[path] = float(alpha[rule])
  elif isinstance(alpha, (list, tuple, np.ndarray)):
    values = [float(v) for v in alpha]
    if not values:
      raise ConfigError("an alpha list needs at least one value")
    layer_list = trees.layers(tree, order)
    depth = {name: (i / max(len(layer_list) - 1, 1))
             for i, name in enumerate(layer_list)}
    anchors = np.linspace(0.0, 1.0, len(values))
    out = {p: float(np.interp(depth[trees.layer_of(p)], anchors, values))
           for p in flat}
  else:
    out = dict.fromkeys(flat, float(alpha))
  for value in set(out.values()):
    check_alpha(value, allow_extrapolation)
  return out


def _is_float(leaf: Any) -> bool:
  return jnp.issubdtype(leaf.dtype, jnp.floating)


def _lerp(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
  # Low-precision leaves are mixed in float32 and cast back once.
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  t = t.astype(dtype)
  return ((1 - t) * x.astype(dtype) + t * y.astype(dtype)).astype(x.dtype)


# One compiled function per tree structure; the coefficients are arguments,
# so sweeping alpha does not recompile. streaming.py mixes single leaves with
# lerp_leaf: compiled the same way, so both give the same bits.
_lerp_flat = jax.jit(lambda a, b, t: {k: _lerp(a[k], b[k], t[k]) for k in a})
lerp_leaf = jax.jit(_lerp)


def interpolate(a: Any, b: Any, alpha: AlphaSpec, *,
                order: Sequence[str] | None = None, non_float: str = "a",
                allow_extrapolation: bool = False) -> Any:
  """``(1 - alpha) * a + alpha * b`` for two trees of the same structure.

  Args:
    a, b: pytrees (nested dicts) with the same paths, shapes and dtypes;
      numpy or ``jax.Array`` leaves, sharded or not (the result keeps the
      inputs' shardings).
    alpha: a number, ``{pattern: alpha}`` rules or a list across depth.
    order: layer order for list-valued ``alpha``.
    non_float: integer/bool leaves come from ``'a'``, ``'b'`` or the
      ``'nearest'`` endpoint (per leaf, by its alpha).
    allow_extrapolation: accept alphas outside [0, 1].

  Returns:
    A nested dict with the paths of ``a``; float leaves keep their dtype.
  """
  if non_float not in NON_FLOAT:
    raise ConfigError(f"non_float='{non_float}' is not one of {NON_FLOAT}")
  trees.check_compatible(a, b)
  alphas = resolve_alphas(a, alpha, order=order,
                          allow_extrapolation=allow_extrapolation)
  fa, fb = trees.flatten(a), trees.flatten(b)
  floats = [p for p in fa if _is_float(fa[p])]
  mixed = _lerp_flat({p: fa[p] for p in floats}, {p: fb[p] for p in floats},
                     {p: np.float32(alphas[p]) for p in floats})
  out = {}
  for path in fa:
    if path in mixed:
      out[path] = mixed[path]
    else:
      take_b = non_float == "b" or (non_float == "nearest"
                                    and alphas[path] >= 0.5)
      out[path] = fb[path] if take_b else fa[path]
  return trees.unflatten(out)


def interpolate_variables(va: Mapping[str, Any], vb: Mapping[str, Any],
                          alpha: AlphaSpec, *, batch_stats: str = "interpolate",
                          stats_fn: batchnorm.StatsFn | None = None,
                          batches: Iterable[jax.Array] | None = None,
                          order: Sequence[str] | None = None,
                          non_float: str = "a",
                          allow_extrapolation: bool = False) -> dict[str, Any]:
  """Interpolates model variables ``{"params", "batch_stats"}``.

  ``batch_stats`` (``batchnorm.INTERPOLATION_MODES``): ``'interpolate'``
  (lerp the running statistics with the same alphas as the weights),
  ``'keep_a'``/``'keep_b'`` (keep one endpoint's), or ``'recompute'``
  (re-estimate them for the interpolated weights on ``batches`` with
  ``stats_fn``; see ``batchnorm.recompute_batch_stats``).
  """
  batchnorm.check_mode(batch_stats, batchnorm.INTERPOLATION_MODES,
                       "batch_stats")
  sa, sb = va.get("batch_stats", {}), vb.get("batch_stats", {})
  if order is None:
    # One depth scale for both collections, so a BatchNorm layer gets the
    # alpha of its place in the network, not of its rank among BN layers.
    order = trees.depth_order(dict.fromkeys(
        trees.layers(va["params"]) + trees.layers(sa)))
  kw = dict(order=order, non_float=non_float,
            allow_extrapolation=allow_extrapolation)
  out = {"params": interpolate(va["params"], vb["params"], alpha, **kw)}
  trees.check_compatible(sa, sb, "the BatchNorm statistics")
  if not jax.tree.leaves(sa):
    out["batch_stats"] = sa
  elif batch_stats == "keep_a":
    out["batch_stats"] = sa
  elif batch_stats == "keep_b":
    out["batch_stats"] = sb
  else:
    out["batch_stats"] = interpolate(sa, sb, alpha, **kw)
    if batch_stats == "recompute":
      if stats_fn is None or batches is None:
        raise ConfigError("batch_stats='recompute' needs stats_fn and batches")
      out["batch_stats"] = batchnorm.recompute_batch_stats(stats_fn, out,
                                                           batches)
  return out
