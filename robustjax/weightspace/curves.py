"""Accuracy and loss along the straight line between two models.

``interpolation_curve`` evaluates ``theta(t) = (1 - t) * A + t * B`` at each
``t`` of a grid with any ``eval_fn(variables) -> metrics``;
``make_evaluator`` builds the usual one: clean and PGD accuracy and mean
cross-entropy on the first N points of a split (the same per-example attack
keys as ``robustjax.evaluation``, so its accuracies agree with the
``evaluate`` task), plus optional OOD accuracy from a corruption evaluator.
``loss_barrier`` reduces a curve to its barrier, under both definitions in
use: the peak over the endpoints' mean loss, and the peak excess over the
chord between the endpoint losses.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from robustjax import data, evaluation, sharding
from robustjax.attacks import Attack
from robustjax.errors import ConfigError
from robustjax.weightspace import batchnorm
from robustjax.weightspace import interpolate as interp

EvalFn = Callable[[Any], dict[str, float]]


def make_evaluator(model, split: data.ArraySplit, mesh, *, attack: Attack,
                   batch_size: int, num_examples: int | None = None,
                   seed: int = 0, ood_fn: EvalFn | None = None) -> EvalFn:
  """``eval_fn(variables) -> metrics`` for ``interpolation_curve``.

  Metrics: ``clean_acc``, ``clean_loss`` (mean CE) and, unless ``attack``
  is ``none``, ``adv_acc`` and ``adv_loss`` (CE at the attacked point);
  accuracies are fractions. ``ood_fn(variables)``, when given, adds its own
  keys (e.g. ``ood_acc`` from ``evaluation.evaluate_corruptions``). The
  step compiles once and is reused for every point of the curve.
  """
  step = evaluation.make_eval_step(model, attack, mesh)
  kinds = ("clean",) if attack.is_identity else ("clean", "adv")
  key = jax.random.key(seed)

  def eval_fn(variables):
    variables = sharding.put_replicated(variables, mesh)
    totals = data.sum_batches(step, variables, split, mesh,
                              batch_size=batch_size,
                              num_examples=num_examples, key=key)
    count = max(totals["count"], 1.0)
    out = {"num_examples": int(count)}
    for kind in kinds:
      out[f"{kind}_acc"] = totals[kind] / count
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
    stats_fn: batchnorm.StatsFn | None = None,
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
  """The loss barrier of a curve that includes both endpoints, under the
  two definitions in use (they agree when ``L(0) == L(1)``).

  Returns:
    ``barrier``: ``max_t L(t) - (L(0) + L(1)) / 2``, the peak over the mean
    of the endpoint losses. Frankle et al. 2020 (Linear Mode Connectivity
    and the Lottery Ticket Hypothesis) define their error barrier height
    this way, on error rather than loss; Ainsworth et al. 2023 (Git
    Re-Basin) define their loss barrier this way, and their code computes
    it so. With unequal endpoints it includes half the gap between them: a
    path whose loss falls straight from one endpoint to the other scores
    ``|L(0) - L(1)| / 2``.
    ``barrier_linear``: ``max_t [L(t) - ((1 - t) L(0) + t L(1))]``, the
    largest excess over the straight line (chord) between the endpoint
    losses: the loss barrier of Entezari et al. 2022 (The Role of
    Permutation Invariance in Linear Mode Connectivity). Never negative,
    since the endpoints score 0.
    ``argmax_alpha``: where the loss itself peaks (the ``t`` of
    ``barrier``'s maximum).
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
