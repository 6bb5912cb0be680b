"""Blur corruptions: gaussian, glass, defocus, motion, zoom.

Each is ``fn(key, image [H, W, C], severity) -> image`` on [0, 1] floats with
CIFAR-10-C's constants (make_cifar_c.py). Where a corruption has random
draws, ``*_draws(key, shape, severity)`` makes them and ``*_from`` applies
them, so tests can feed the same draws to an independent implementation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.data.corruptions import _ops

GAUSSIAN_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
# (sigma, max_delta, iterations)
GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
# (disk radius, alias blur sigma)
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
# (radius, sigma) of ImageMagick's motion blur; the angle is U(-45, 45).
MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
# Zoom factors. np.arange with a float step, exactly as the reference wrote
# it: its end points are included (1.00..1.06 at severity 1: 7 zooms).
ZOOM_ENDS = (1.06, 1.11, 1.16, 1.21, 1.26)


def zoom_factors(severity: int) -> np.ndarray:
  return np.arange(1, ZOOM_ENDS[severity - 1], 0.01)


def gaussian_blur(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Gaussian blur per channel (scipy/scikit-image: 'nearest' border,
  truncated at 4 sigma)."""
  del key
  return jnp.clip(_ops.gaussian_filter(x, GAUSSIAN_SIGMA[severity - 1]), 0, 1)


# ------------------------------------------------------------------- glass

def glass_draws(key: jax.Array, shape: tuple[int, ...], severity: int
                ) -> jax.Array:
  """int32 ``[iterations, H, W, 2]``: the ``(dx, dy)`` of each visited
  pixel, uniform in ``[-max_delta, max_delta)`` (numpy's randint excludes
  the upper bound, so with max_delta 1 the offsets are -1 or 0)."""
  _, delta, iterations = GLASS[severity - 1]
  return jax.random.randint(key, (iterations, shape[0], shape[1], 2),
                            -delta, delta)


def _blur_minus_image(v: jax.Array, kernel: np.ndarray, axis: int
                      ) -> jax.Array:
  """``correlate1d(v, kernel) - v`` along ``axis`` ('nearest' border) for a
  kernel that sums to 1, summed from neighbour differences:
  ``sum_k kernel[r + k] * ((v[i - k] - v[i]) + (v[i + k] - v[i]))``. The
  terms are small, so float32 keeps digits that ``blur(v) - v`` would lose
  to cancellation; on uint8 levels the differences and their pairwise sums
  are exact, and a pair that cancels gives exactly 0."""
  r = (len(kernel) - 1) // 2
  out = jnp.zeros_like(v)
  if r == 0:
    return out
  pad = [(0, 0)] * v.ndim
  pad[axis] = (r, r)
  vp = jnp.pad(v, pad, mode="edge")
  n = v.shape[axis]
  for k in range(1, r + 1):
    before = jax.lax.slice_in_dim(vp, r - k, r - k + n, axis=axis)
    after = jax.lax.slice_in_dim(vp, r + k, r + k + n, axis=axis)
    out = out + float(kernel[r + k]) * ((before - v) + (after - v))
  return out


def blur_to_levels(x: jax.Array, sigma: float) -> jax.Array:
  """``floor(255 * gaussian_filter(x, sigma))`` as float32 levels, the
  reference's ``np.uint8(gaussian(x) * 255)`` computed in float64.

  Truncation makes the last bits matter. With sigma 0.25 a pixel whose only
  differing neighbour is a diagonal one sits ``1.1e-7`` levels per level of
  difference below an integer (the corner weight is ``exp(-8)^2``), while a
  float32 blur of values up to 255 is good to about ``5e-5`` levels: on 64
  CIFAR-10 test images, flooring it put 1.1-1.3% of the values on the other
  level than the reference for any offset up to 1e-4 added before the floor
  (7.1% with 1e-3). So the blur is split into the image plus ``blur -
  image``, the latter summed from neighbour differences (separable: ``d_h +
  d_w(v) + d_w(d_h)``), whose float32 error is relative to its own small
  size, and ``floor`` acts on that small part alone. No offset is needed: on
  uint8-level input the result equals the float64 reference's except where
  float64's own rounding puts an exact integer a hair below itself (on
  those images 1 value in 9,000 at sigma 0.4, 1 in 200,000 at 0.25).
  """
  kernel = _ops.gaussian_kernel1d(float(sigma))
  v = x * 255.0
  whole = jnp.round(v)
  d_h = _blur_minus_image(v, kernel, 0)
  change = (d_h + _blur_minus_image(v, kernel, 1)
            + _blur_minus_image(d_h, kernel, 1))
  return whole + jnp.floor((v - whole) + change)


def glass_blur_from(x: jax.Array, offsets: jax.Array, severity: int
                    ) -> jax.Array:
  """Blur, truncate to uint8 levels, move pixels locally, blur again.

  The reference visits rows and columns from ``H - max_delta`` down to
  ``max_delta + 1`` and "swaps" ``x[h, w]`` with ``x[h + dy, w + dx]``. The
  swap is a tuple assignment of numpy row views, so it is really a copy
  (``x[h, w] = x[h + dy, w + dx]``; the source keeps its value). With
  offsets in {-1, 0} the source is never visited before its target within a
  pass, so one pass equals a parallel gather from the pass's input, which
  is what this computes (exact, not an approximation).
  """
  sigma, delta, iterations = GLASS[severity - 1]
  assert delta == 1, "the gather form is exact for max_delta == 1 only"
  h, w = x.shape[:2]
  x = blur_to_levels(x, sigma) / 255.0
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  visited = (rows >= delta + 1) & (cols >= delta + 1)
  for it in range(iterations):
    dx, dy = offsets[it, ..., 0], offsets[it, ..., 1]
    src_r = jnp.where(visited, rows + dy, rows)
    src_c = jnp.where(visited, cols + dx, cols)
    x = x[src_r, src_c]
  return jnp.clip(_ops.gaussian_filter(x, sigma), 0, 1)


def glass_blur(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  return glass_blur_from(x, glass_draws(key, x.shape, severity), severity)


# ----------------------------------------------------------------- defocus

@functools.lru_cache(maxsize=None)
def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """The disk ``x^2 + y^2 <= radius^2`` on the grid -8..8, normalised, then
  smoothed by a 3x3 Gaussian of ``alias_blur`` (OpenCV GaussianBlur,
  reflect-101 border) to antialias it; float32, cropped to its non-zero
  centre (``[2r+1, 2r+1]``)."""
  grid = np.arange(-8, 9)
  xx, yy = np.meshgrid(grid, grid)
  disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  g = np.exp(-np.arange(-1, 2) ** 2 / (2.0 * alias_blur ** 2))
  g /= g.sum()
  padded = np.pad(disk, 1, mode="reflect")  # numpy 'reflect' = reflect-101
  tmp = sum(g[k] * padded[k:k + 17, :] for k in range(3))
  out = sum(g[k] * tmp[:, k:k + 17] for k in range(3))
  # The CIFAR radii (<= 1.5) leave only the centre 5x5 non-zero: crop the
  # exact zeros (17x17 depthwise convolutions ran 4x slower on the CPU).
  r = int(np.max(np.abs(np.argwhere(out != 0) - 8)))
  return out[8 - r:9 + r, 8 - r:9 + r].astype(np.float32)


def defocus_blur(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Disk-shaped lens blur (``cv2.filter2D`` with reflect-101 border)."""
  del key
  kernel = defocus_kernel(*DEFOCUS[severity - 1])
  return jnp.clip(_ops.filter2d(x, kernel, "reflect101"), 0, 1)


# ------------------------------------------------------------------ motion

def motion_draws(key: jax.Array, shape: tuple[int, ...], severity: int
                 ) -> jax.Array:
  """The blur angle in degrees, U(-45, 45) (a scalar)."""
  del shape, severity
  return jax.random.uniform(key, (), minval=-45.0, maxval=45.0)


def motion_blur_from(x: jax.Array, angle: jax.Array, severity: int
                     ) -> jax.Array:
  """ImageMagick's motion blur (a one-sided Gaussian line kernel, see
  ``_ops.motion_blur``) and the 8-bit PNG round trip around it."""
  radius, sigma = MOTION[severity - 1]
  return _ops.quantize(_ops.motion_blur(x, radius, sigma, angle))


def motion_blur(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  return motion_blur_from(x, motion_draws(key, x.shape, severity), severity)


# -------------------------------------------------------------------- zoom

def zoom_blur(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Mean of the image and its centre zooms by each factor (scipy zoom,
  linear interpolation; a factor's zoom is ``A x A^T``)."""
  del key
  size = x.shape[0]
  assert x.shape[1] == size, "zoom_blur needs square images"
  out = x
  for factor in zoom_factors(severity):
    a = _ops.clipped_zoom_matrix(size, float(factor))
    out = out + _ops.apply_matrix(x, a, a)
  return jnp.clip(out / (len(zoom_factors(severity)) + 1), 0, 1)
