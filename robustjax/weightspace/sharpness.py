"""Layer-wise worst-case sharpness and the "straggler" layers.

For one layer ``l`` (a module path such as ``stage3/block1/conv2``) and a
loss ``L(theta)`` on fixed data, the sharpness is

  S_l(rho) = max_{||delta / s|| <= rho} L(theta + delta_l) - L(theta)

where ``delta_l`` perturbs only the leaves of layer ``l`` (kernel and bias
jointly), the norm is L2 or Linf over the whole layer, and ``s = 1`` or, in
the adaptive variant (Kwon et al. 2021; tml-epfl/sharpness-vs-generalization),
``s = |theta_l|`` elementwise. The maximum is found by projected gradient
ascent on ``u = delta / s`` (normalised steps for L2, sign steps for Linf)
and the best loss seen is kept, so S is never negative and is exactly 0 for
a layer the loss does not depend on.

The paper on interpolated CLIP models that motivates this (arXiv 2410.16476)
publishes no code or exact definition; every choice above is a knob. A
*straggler* here is a layer whose sharpness is at least ``ratio`` times the
median over layers (our rule, not the paper's).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.errors import ConfigError
from robustjax.weightspace import trees

NORMS = ("l2", "linf")
LossFn = Callable[[Any], jax.Array]


def classification_loss_fn(apply_fn: Callable[..., Any], batch_stats: Any,
                           images: jax.Array, labels: jax.Array) -> LossFn:
  """``params -> mean CE`` of a Flax ``apply`` in inference mode (running BN
  statistics, which the perturbation does not change) on one batch.

  images: float ``[B, H, W, 3]`` in [0, 1]; labels: int ``[B]``.
  """
  def loss_fn(params):
    logits = apply_fn({"params": params, "batch_stats": batch_stats}, images,
                      train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], -1))
  return loss_fn


def _norm(u: Mapping[str, jax.Array], mask: Mapping[str, jax.Array],
          norm: str) -> jax.Array:
  if norm == "l2":
    return jnp.sqrt(sum(m * jnp.sum(jnp.square(u[k])) for k, m in mask.items()))
  return jnp.max(jnp.stack([m * jnp.max(jnp.abs(u[k]))
                            for k, m in mask.items()]))


def _make_ascent_step(loss_fn: LossFn, norm: str, adaptive: bool):
  """One compiled step shared by every layer: the layer is a 0/1 mask per
  leaf (an argument), so sweeping layers does not recompile."""

  def perturbed(flat_params, u, mask):
    scale = {k: (jnp.abs(w) if adaptive else jnp.ones_like(w))
             for k, w in flat_params.items()}
    moved = {k: w + mask[k] * scale[k] * u[k] for k, w in flat_params.items()}
    return loss_fn(trees.unflatten(moved))

  def step(flat_params, u, mask, rho, step_size):
    loss, g = jax.value_and_grad(perturbed, argnums=1)(flat_params, u, mask)
    g = {k: g[k] * mask[k] for k in g}
    if norm == "l2":
      gnorm = _norm(g, mask, "l2")
      # A zero gradient (the loss ignores this layer) takes no step.
      u = {k: u[k] + step_size * g[k] / jnp.maximum(gnorm, 1e-30) for k in u}
      unorm = _norm(u, mask, "l2")
      factor = jnp.minimum(1.0, rho / jnp.maximum(unorm, 1e-30))
      u = {k: u[k] * factor for k in u}
    else:
      u = {k: jnp.clip(u[k] + step_size * jnp.sign(g[k]), -rho, rho)
           for k in u}
    return loss, u

  return jax.jit(step), jax.jit(perturbed)


def layer_sharpness(loss_fn: LossFn, params: Any,
                    layers: Sequence[str] | None = None, *, rho: float,
                    norm: str = "l2", adaptive: bool = False, steps: int = 10,
                    step_size: float | None = None,
                    order: Sequence[str] | None = None
                    ) -> dict[str, dict[str, float]]:
  """Worst-case loss increase in a ball around each layer's weights.

  Args:
    loss_fn: ``params -> scalar loss`` (e.g. ``classification_loss_fn``).
    params: the parameter tree (nested dicts).
    layers: module paths to measure (default: every layer, in depth order).
    rho: radius of the ball (in units of ``|w|`` when ``adaptive``).
    norm: ``'l2'`` or ``'linf'`` over the layer's leaves jointly.
    adaptive: scale the ball elementwise by ``|w|``.
    steps: gradient-ascent iterations (each one forward + backward).
    step_size: default ``2.5 * rho / steps`` (the usual PGD choice).
    order: layer order for the default ``layers``.

  Returns:
    ``{layer: {"sharpness", "loss", "worst_loss", "num_params"}}`` in depth
    order; ``sharpness = worst_loss - loss >= 0``.
  """
  if norm not in NORMS:
    raise ConfigError(f"sharpness norm '{norm}' is not one of {NORMS}")
  if not rho >= 0 or steps < 1:
    raise ConfigError(f"sharpness needs rho >= 0 and steps >= 1, got "
                      f"rho={rho}, steps={steps}")
  flat = {k: jnp.asarray(v) for k, v in trees.flatten(params).items()}
  floats = [k for k, v in flat.items() if jnp.issubdtype(v.dtype,
                                                          jnp.floating)]
  flat = {k: flat[k] for k in floats}
  if layers is None:
    layers = trees.layers(trees.unflatten(flat), order)
  step, perturbed = _make_ascent_step(loss_fn, norm, adaptive)
  step_size = 2.5 * rho / steps if step_size is None else float(step_size)
  zeros = {k: jnp.zeros_like(v) for k, v in flat.items()}
  no_mask = {k: jnp.float32(0) for k in flat}
  base = float(perturbed(flat, zeros, no_mask))
  results = {}
  for layer in layers:
    if not any(trees.layer_of(k) == layer for k in flat):
      raise ConfigError(
          f"no float parameters under layer '{layer}'; layers are module "
          f"paths such as '{trees.layer_of(next(iter(flat)))}'")
    mask = {k: jnp.float32(trees.layer_of(k) == layer) for k in flat}
    u, worst = zeros, base
    for _ in range(steps):
      loss, u = step(flat, u, mask, jnp.float32(rho), jnp.float32(step_size))
      worst = max(worst, float(loss))
    worst = max(worst, float(perturbed(flat, u, mask)))
    results[layer] = {
        "sharpness": worst - base, "loss": base, "worst_loss": worst,
        "num_params": int(sum(flat[k].size for k in flat
                              if trees.layer_of(k) == layer))}
  return results


def rank_layers(results: Mapping[str, Mapping[str, float]], *,
                ratio: float = 2.0) -> dict[str, Any]:
  """Layers sorted by sharpness, sharpest first, and the stragglers.

  Returns ``{"ranking": [(layer, sharpness), ...], "median": m,
  "stragglers": [layers with sharpness >= ratio * m]}``.
  """
  ranking = sorted(((k, float(v["sharpness"])) for k, v in results.items()),
                   key=lambda kv: -kv[1])
  median = float(np.median([s for _, s in ranking])) if ranking else 0.0
  stragglers = [k for k, s in ranking if s > 0 and s >= ratio * median]
  return {"ranking": ranking, "median": median, "stragglers": stragglers}
