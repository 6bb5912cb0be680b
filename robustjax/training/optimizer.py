"""Optimizer and learning-rate schedules, built from ``config.optimizer``.

SGD with momentum and coupled weight decay as in the PyTorch references
(``torch.optim.SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient before
the momentum buffer), so the numbers here mean what they mean in the papers.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import optax

from robustjax.errors import ConfigError

SCHEDULES = ("constant", "piecewise", "cosine", "cyclic")


def boundary_step(fraction: float, total_steps: int) -> int:
  """The first step of a piecewise drop at ``fraction`` of training.

  ``floor(fraction * total_steps)``, except that a product within rounding
  error of an integer is that integer: a drop given as ``74 / N`` of
  ``N * steps_per_epoch`` steps lands on step ``74 * steps_per_epoch`` even
  where the float product comes out a hair below it (N = 98, 390 steps per
  epoch: 28859.999999999996).
  """
  exact = fraction * total_steps
  nearest = round(exact)
  if math.isclose(exact, nearest, rel_tol=1e-9, abs_tol=1e-9):
    return int(nearest)
  return math.floor(exact)


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step.

  ``piecewise``: ``lr`` times ``decay`` at each boundary, boundaries given as
  fractions of ``total_steps`` (Madry / Rice: 0.5 and 0.75 of training); the
  drop starts at ``boundary_step(fraction, total_steps)``.
  ``cosine``: cosine decay to 0. ``cyclic``: the triangle of Wong et al.'s
  fast AT, 0 -> ``lr`` at ``peak_fraction`` of training -> 0.
  ``warmup_steps`` prepends a linear warm-up from 0 (not for ``cyclic``).
  """
  name = cfg.schedule
  lr = float(cfg.lr)
  warmup = int(cfg.get("warmup_steps", 0))
  if name not in SCHEDULES:
    raise ConfigError(f"unknown learning-rate schedule '{name}'; choose one "
                      f"of: {', '.join(SCHEDULES)}")
  if name == "cyclic":
    peak = max(1, int(float(cfg.get("peak_fraction", 0.4)) * total_steps))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, peak),
         optax.linear_schedule(lr, 0.0, max(1, total_steps - peak))], [peak])
  decay_steps = max(1, total_steps - warmup)
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "piecewise":
    boundaries = {boundary_step(float(b), total_steps) - warmup:
                  float(cfg.decay) for b in cfg.boundaries}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    main = optax.cosine_decay_schedule(lr, decay_steps)
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params: Any, which: str) -> Any:
  if which == "all":
    return jax.tree.map(lambda _: True, params)
  if which == "kernels":
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
  raise ConfigError(f"unknown optimizer.weight_decay_on '{which}'; choose "
                    "'all' (as the PyTorch references) or 'kernels'")


def make_optimizer(cfg: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``(optimizer, schedule)`` from ``config.optimizer``.

  Keys: ``lr, momentum, nesterov, weight_decay, weight_decay_on
  ('all'|'kernels'), schedule, boundaries, decay, warmup_steps,
  peak_fraction``.
  """
  schedule = make_schedule(cfg, total_steps)
  which = cfg.get("weight_decay_on", "all")
  mask: Callable[[Any], Any] = lambda p: _decay_mask(p, which)  # noqa: E731
  tx = optax.chain(
      optax.add_decayed_weights(float(cfg.weight_decay), mask=mask),
      optax.sgd(schedule, momentum=float(cfg.momentum) or None,
                nesterov=bool(cfg.get("nesterov", False))))
  return tx, schedule
