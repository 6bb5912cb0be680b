"""Checks of attack hyper-parameters and inputs, shared by every attack.

Everything here runs on Python values at trace time, so a bad value raises
a one-line ``ConfigError`` before anything compiles.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.errors import ConfigError

NORMS = ("linf", "l2")


def static_float(name: str, value: Any) -> float:
  """``value`` as a Python float, or a one-line ConfigError."""
  if isinstance(value, jax.core.Tracer):
    raise ConfigError(
        f"{name} must be a Python number, not a traced array: attack "
        f"hyper-parameters are static (close over them or mark them static)")
  if isinstance(value, bool) or not isinstance(
      value, (numbers.Real, np.ndarray, jax.Array)):
    raise ConfigError(f"{name} must be a number, got {value!r}")
  out = float(value)
  if not math.isfinite(out):
    raise ConfigError(f"{name} must be finite, got {out}")
  return out


def static_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ConfigError(f"{name} must be a Python int, got {value!r}")
  if value < minimum:
    raise ConfigError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def check_eps(eps: Any) -> float:
  eps = static_float("eps", eps)
  if not 0.0 <= eps <= 1.0:
    raise ConfigError(
        f"eps={eps} is outside [0, 1]; eps is in pixel units of [0, 1] "
        f"images (e.g. 8/255 = {8 / 255:.5f})")
  return eps


def check_step_size(step_size: Any) -> float:
  step_size = static_float("step_size", step_size)
  if step_size < 0:
    raise ConfigError(f"step_size must be >= 0, got {step_size}")
  return step_size


def check_choice(name: str, value: Any, choices) -> str:
  if not isinstance(value, str) or value not in choices:
    raise ConfigError(
        f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
  return value


def check_images(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 2:
    raise ConfigError(
        f"x must be a float batch [B, ...] of images in [0, 1], got "
        f"{x.dtype}{tuple(x.shape)}; convert uint8 images with x / 255")
  return x


def check_labels(name: str, labels: Any, x: jax.Array) -> jax.Array:
  labels = jnp.asarray(labels)
  if labels.shape != x.shape[:1] or not jnp.issubdtype(
      labels.dtype, jnp.integer):
    raise ConfigError(
        f"{name} must be int [B] with B={x.shape[0]}, got "
        f"{labels.dtype}{tuple(labels.shape)}")
  return labels
