"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper),
speckle. Each is ``fn(key, image [H, W, C], severity) -> image`` on [0, 1]
floats; the constants are CIFAR-10-C's (make_cifar_c.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_RATE = (500, 250, 100, 75, 50)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_SIGMA = (0.06, 0.10, 0.12, 0.16, 0.20)


def gaussian_noise(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``x + N(0, sigma)`` per pixel and channel."""
  sigma = GAUSSIAN_SIGMA[severity - 1]
  return jnp.clip(x + sigma * jax.random.normal(key, x.shape), 0, 1)


def shot_noise(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``Poisson(x * c) / c``: photon noise at ``c`` photons per unit."""
  c = SHOT_RATE[severity - 1]
  counts = jax.random.poisson(key, x * c, x.shape)
  return jnp.clip(counts.astype(jnp.float32) / c, 0, 1)


def impulse_noise(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Salt and pepper: each value (pixel and channel independently) is
  replaced with probability ``amount``, by 1 or 0 with equal odds, as
  scikit-image's ``random_noise(mode='s&p')`` does."""
  amount = IMPULSE_AMOUNT[severity - 1]
  k_flip, k_salt = jax.random.split(key)
  flipped = jax.random.uniform(k_flip, x.shape) < amount
  salt = jax.random.uniform(k_salt, x.shape) < 0.5
  return jnp.where(flipped, salt.astype(x.dtype), x)


def speckle_noise(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``x + x * N(0, sigma)``: noise proportional to the intensity."""
  sigma = SPECKLE_SIGMA[severity - 1]
  return jnp.clip(x + x * sigma * jax.random.normal(key, x.shape), 0, 1)
