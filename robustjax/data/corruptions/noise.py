"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper),
speckle. Each is ``fn(key, image [H, W, C], severity) -> image`` on [0, 1]
floats; the constants are CIFAR-10-C's (make_cifar_c.py)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_RATE = (500, 250, 100, 75, 50)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_SIGMA = (0.06, 0.10, 0.12, 0.16, 0.20)


def gaussian_noise(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``x + N(0, sigma)`` per pixel and channel."""
  sigma = GAUSSIAN_SIGMA[severity - 1]
  return jnp.clip(x + sigma * jax.random.normal(key, x.shape), 0, 1)


_POISSON_TABLE_SIZE = 1024  # counts 0..1023; P(N > 1023) < 1e-60 for rates <= 500


@functools.lru_cache(maxsize=None)
def poisson_cdf_table(rate: int) -> np.ndarray:
  """float32 ``[256, 1024]``: row k is the CDF of Poisson(k / 255 * rate) at
  counts 0..1023 (computed in float64 on the host)."""
  lam = np.arange(256, dtype=np.float64)[:, None] / 255.0 * rate
  n = np.arange(_POISSON_TABLE_SIZE, dtype=np.float64)[None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    log_pmf = n * np.log(lam) - lam - np.array(
        [math.lgamma(v + 1) for v in n[0]])[None, :]
  log_pmf[0] = np.where(n[0] == 0, 0.0, -np.inf)  # rate 0: always 0
  return np.minimum(np.cumsum(np.exp(log_pmf), 1), 1.0).astype(np.float32)


def shot_noise(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``Poisson(x * c) / c``: photon noise at ``c`` photons per unit.

  Sampled by inverting the Poisson CDF (a binary search in a host-built
  table): ``jax.random.poisson``'s rejection loop ran at ~300 images/s on
  the CPU. The table has one row per uint8 level, so the rate uses ``x``
  rounded to the nearest level: exact for images that came from uint8 data
  (all of CIFAR), within 1/510 in rate otherwise.
  """
  c = SHOT_RATE[severity - 1]
  table = jnp.asarray(poisson_cdf_table(c))
  level = jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.int32)
  u = jax.random.uniform(key, x.shape)
  # The count is the number of CDF entries below u (entries are sorted).
  count = jnp.zeros(x.shape, jnp.int32)
  step = _POISSON_TABLE_SIZE // 2
  while step >= 1:
    below = table[level, count + step - 1] < u
    count = jnp.where(below, count + step, count)
    step //= 2
  return jnp.clip(count.astype(jnp.float32) / c, 0, 1)


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
