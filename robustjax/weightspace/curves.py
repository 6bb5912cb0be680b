"""Accuracy and loss along the straight line between two models.

``interpolation_curve`` evaluates ``theta(t) = (1 - t) * A + t * B`` at each
``t`` of a grid with any ``eval_fn(variables) -> metrics``;
``make_evaluator`` builds the usual one: clean and PGD accuracy and mean
cross-entropy on the first N points of a split (the same per-example attack
keys as ``robustjax.evaluation``, so its accuracies agree with the
``evaluate`` task), plus optional OOD accuracy from a corruption evaluator.
``loss_barrier`` reduces a curve to its barrier.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import attacks, data, evaluation, sharding
from robustjax.errors import ConfigError
from robustjax.weightspace import interpolate as interp

EvalFn = Callable[[Any], dict[str, float]]


def _make_loss_step(model, attack_cfg: Any, mesh):
  """Jitted ``(variables, batch, key) -> sums`` of correct counts and CE
  losses, clean and under ``attack_cfg`` (PGD; ``steps=0`` skips it)."""
  steps = int(attack_cfg.steps)

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    y = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
    logits = logits_fn(x)
    clean_ok = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    clean_loss = attacks.cross_entropy(logits, y)
    out = {"clean_correct": jnp.sum(clean_ok * mask),
           "clean_loss": jnp.sum(clean_loss * mask), "count": jnp.sum(mask)}
    if steps > 0:
      keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch["index"])
      x_adv = attacks.pgd(
          logits_fn, x, y, key=keys, eps=float(attack_cfg.eps),
          step_size=float(attack_cfg.step_size), steps=steps,
          norm=attack_cfg.get("norm", "linf"),
          random_start=bool(attack_cfg.get("random_start", True)),
          restarts=int(attack_cfg.get("restarts", 1)),
          loss=attack_cfg.get("loss", "ce"))
      adv_logits = logits_fn(x_adv)
      # As in robustjax.evaluation: a point wrong on clean input is broken.
      adv_ok = (jnp.argmax(adv_logits, -1) == y).astype(jnp.float32) * clean_ok
      out["adv_correct"] = jnp.sum(adv_ok * mask)
      out["adv_loss"] = jnp.sum(attacks.cross_entropy(adv_logits, y) * mask)
    return out

  return jax.jit(step, in_shardings=(sharding.replicated(mesh),
                                     sharding.batch_sharded(mesh),
                                     sharding.replicated(mesh)),
                 out_shardings=sharding.replicated(mesh))


def make_evaluator(model, split: data.ArraySplit, mesh, *, attack_cfg: Any,
                   batch_size: int, num_examples: int | None = None,
                   seed: int = 0, ood_fn: EvalFn | None = None) -> EvalFn:
  """``eval_fn(variables) -> metrics`` for ``interpolation_curve``.

  Metrics: ``clean_acc``, ``clean_loss`` (mean CE) and, when
  ``attack_cfg.steps > 0``, ``adv_acc`` and ``adv_loss`` (CE at the PGD
  point); accuracies are fractions. ``ood_fn(variables)``, when given, adds
  its own keys (e.g. ``ood_acc`` from ``evaluation.evaluate_corruptions``).
  The step compiles once and is reused for every point of the curve.
  """
  evaluation.validate_attack(attack_cfg)
  step = _make_loss_step(model, attack_cfg, mesh)
  key = sharding.put_replicated(jax.random.key(seed), mesh)

  def eval_fn(variables):
    variables = sharding.put_replicated(variables, mesh)
    totals: dict[str, float] = {}
    for batch in data.eval_batches(split, batch_size, mesh,
                                   num_examples=num_examples):
      for name, value in step(variables, batch, key).items():
        totals[name] = totals.get(name, 0.0) + float(value)
    count = max(totals.pop("count"), 1.0)
    out = {"num_examples": int(count)}
    for kind in ("clean", "adv"):
      if f"{kind}_correct" in totals:
        out[f"{kind}_acc"] = totals[f"{kind}_correct"] / count
        out[f"{kind}_loss"] = totals[f"{kind}_loss"] / count
    if ood_fn is not None:
      out.update(ood_fn(variables))
    return out

  return eval_fn


def interpolation_curve(
    eval_fn: EvalFn, va: Mapping[str, Any], vb: Mapping[str, Any],
    alphas: Sequence[float], *,
    alpha_fn: Callable[[float], interp.AlphaSpec] | None = None,
    batch_stats: str = "interpolate",
    stats_fn: interp.StatsFn | None = None,
    bn_batches: Callable[[], Iterable[jax.Array]] | None = None,
    order: Sequence[str] | None = None, allow_extrapolation: bool = False,
    log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """``eval_fn`` at each point of the path from ``va`` (t=0) to ``vb`` (t=1).

  Args:
    eval_fn: ``variables -> {metric: float}``.
    va, vb: ``{"params", "batch_stats"}`` of two models of one architecture.
    alphas: the grid of ``t``.
    alpha_fn: ``t -> alpha spec`` for per-layer paths (e.g.
      ``lambda t: {"head/*": 0.0, "*": t}``); default ``t`` everywhere.
    batch_stats, stats_fn: see ``interpolate.interpolate_variables``.
    bn_batches: ``() -> iterable of image batches``, called once per point
      when ``batch_stats='recompute'``.
    log: called with one line per point.

  Returns:
    One dict per ``t``: ``{"alpha": t, **metrics, "seconds": s}``.
  """
  for t in alphas:
    interp.check_alpha(t, allow_extrapolation)
  curve = []
  for t in alphas:
    start = time.time()
    variables = interp.interpolate_variables(
        va, vb, alpha_fn(t) if alpha_fn else float(t),
        batch_stats=batch_stats, stats_fn=stats_fn,
        batches=bn_batches() if bn_batches else None, order=order,
        allow_extrapolation=allow_extrapolation)
    point = {"alpha": float(t), **eval_fn(variables)}
    point["seconds"] = round(time.time() - start, 2)
    curve.append(point)
    if log is not None:
      log(format_point(point))
  return curve


def format_point(point: Mapping[str, Any]) -> str:
  """``alpha 0.50: clean 61.2% (loss 1.04) | adv 20.1% (2.31) | ood 50.3%``."""
  parts = [f"alpha {point['alpha']:.2f}:"]
  for kind in ("clean", "adv"):
    if f"{kind}_acc" in point:
      parts.append(f"{kind} {100 * point[f'{kind}_acc']:.1f}% "
                   f"(loss {point[f'{kind}_loss']:.3f})")
  if "ood_acc" in point:
    parts.append(f"ood {100 * point['ood_acc']:.1f}%")
  return " ".join(parts[:2]) + "".join(f" | {p}" for p in parts[2:])


def loss_barrier(alphas: Sequence[float], losses: Sequence[float]
                 ) -> dict[str, float]:
  """The loss barrier of a curve that includes both endpoints.

  Returns:
    ``barrier``: ``max_t L(t) - (L(0) + L(1)) / 2`` (the definition of this
    project's issue and of git-re-basin's barrier plots);
    ``barrier_linear``: ``max_t L(t) - ((1 - t) L(0) + t L(1))`` (Frankle et
    al. / Entezari et al.: the excess over the straight line between the
    endpoint losses; never negative since the endpoints score 0);
    ``argmax_alpha``: where the loss peaks.
  """
  t = np.asarray(alphas, np.float64)
  loss = np.asarray(losses, np.float64)
  if t.shape != loss.shape or not (np.any(t == 0.0) and np.any(t == 1.0)):
    raise ConfigError("the loss barrier needs a curve that includes alpha 0 "
                      "and alpha 1; add both to the alpha grid")
  l0, l1 = loss[t == 0.0][0], loss[t == 1.0][0]
  inside = (t >= 0.0) & (t <= 1.0)
  peak = int(np.argmax(np.where(inside, loss, -np.inf)))
  linear = loss - ((1 - t) * l0 + t * l1)
  return {"barrier": float(loss[peak] - 0.5 * (l0 + l1)),
          "barrier_linear": float(np.max(np.where(inside, linear, -np.inf))),
          "argmax_alpha": float(t[peak])}
