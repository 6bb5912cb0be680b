"""Array operations the corruptions share: filters, resampling, HSV, motion.

Everything here works on one image ``[H, W, C]`` (or one ``[H, W]`` plane)
and is traced under ``jax.vmap`` by the registry. Kernels and resampling
matrices depend only on the severity's constants, so they are built once on
the host with numpy and enter the computation as constants.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# Greyscale weights of ITU-R BT.601, as OpenCV's RGB2GRAY uses them.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


# ------------------------------------------------------------------ filters

@functools.lru_cache(maxsize=None)
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """The 1-D Gaussian of ``scipy.ndimage.gaussian_filter``: radius
  ``int(truncate * sigma + 0.5)``, normalised to sum 1 (float64 ``[2r+1]``)."""
  radius = int(truncate * float(sigma) + 0.5)
  if sigma <= 0 or radius == 0:
    return np.ones(1)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return k / k.sum()


def _pad_mode(mode: str) -> str:
  # scipy.ndimage mode names -> jnp.pad mode names.
  return {"nearest": "edge", "reflect": "symmetric", "mirror": "reflect",
          "reflect101": "reflect", "constant": "constant"}[mode]


def correlate1d(x: jax.Array, kernel: np.ndarray, axis: int,
                mode: str) -> jax.Array:
  """``sum_k kernel[k] * x[i + k - r]`` along ``axis`` (kernel ``[2r+1]``),
  with the border extended as scipy's ``mode`` does. A sum of shifted slices:
  the kernels here have at most a few dozen taps."""
  r = (len(kernel) - 1) // 2
  if r == 0:
    return x * float(kernel[0])
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, mode=_pad_mode(mode))
  n = x.shape[axis]
  out = None
  for k, w in enumerate(kernel):
    term = float(w) * jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
    out = term if out is None else out + term
  return out


def gaussian_filter(x: jax.Array, sigma: float, mode: str = "nearest",
                    truncate: float = 4.0) -> jax.Array:
  """Gaussian blur over the first two (spatial) axes of ``[H, W(, C)]``, as
  ``skimage.filters.gaussian(..., channel_axis=-1)`` / scipy computes it."""
  kernel = gaussian_kernel1d(float(sigma), float(truncate))
  return correlate1d(correlate1d(x, kernel, 0, mode), kernel, 1, mode)


def filter2d(x: jax.Array, kernel: np.ndarray, mode: str = "reflect101"
             ) -> jax.Array:
  """Correlates each channel of ``x`` ``[H, W, C]`` with a 2-D ``kernel``
  ``[k, k]`` (odd k, anchored at its centre), as ``cv2.filter2D`` does."""
  r = kernel.shape[0] // 2
  xp = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode=_pad_mode(mode))
  c = x.shape[-1]
  w = jnp.asarray(np.broadcast_to(kernel[:, :, None, None],
                                  kernel.shape + (1, c)), x.dtype)
  out = jax.lax.conv_general_dilated(
      xp[None], w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
  return out[0]


# --------------------------------------------------------------- resampling

@functools.lru_cache(maxsize=None)
def clipped_zoom_matrix(size: int, factor: float) -> np.ndarray:
  """``A`` (float64 ``[size, size]``) with ``A @ v`` equal to zooming the
  centre crop of ``v`` by ``factor`` with linear interpolation (scipy
  ``zoom(order=1)``: output sample j sits at input ``j * (n-1)/(m-1)``) and
  trimming the result back to ``size`` around its centre."""
  crop = int(np.ceil(size / factor))
  top = (size - crop) // 2
  out_len = int(round(crop * factor))
  trim = (out_len - size) // 2
  scale = (crop - 1) / (out_len - 1) if out_len > 1 else 0.0
  a = np.zeros((size, size))
  for j in range(size):
    pos = (trim + j) * scale
    i0 = int(np.floor(pos))
    if i0 >= crop - 1:  # the last sample (float error may put it past)
      i0, pos = crop - 1, float(crop - 1)
    f = pos - i0
    a[j, top + i0] += 1 - f
    if f > 0:
      a[j, top + i0 + 1] += f
  return a


def apply_matrix(x: jax.Array, rows: np.ndarray, cols: np.ndarray
                 ) -> jax.Array:
  """``rows @ x @ cols.T`` over the spatial axes of ``[H, W(, C)]``."""
  rows = jnp.asarray(rows, jnp.float32)
  cols = jnp.asarray(cols, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  if x.ndim == 2:
    return jnp.einsum("ij,jk,lk->il", rows, x, cols, precision=hi)
  return jnp.einsum("ij,jkc,lk->ilc", rows, x, cols, precision=hi)


def reflect_index(i: jax.Array, n: int, mode: str) -> jax.Array:
  """Integer index ``i`` folded into ``[0, n)``: ``'reflect'`` repeats the
  edge pixel (scipy's reflect, ``d c b a | a b c d``), ``'reflect101'`` does
  not (OpenCV's default, ``d c b | a b c d``), ``'nearest'`` clamps."""
  if mode == "nearest":
    return jnp.clip(i, 0, n - 1)
  if mode == "reflect":
    period = 2 * n
    i = jnp.mod(i, period)
    return jnp.where(i >= n, period - 1 - i, i)
  if mode == "reflect101":
    period = 2 * n - 2
    i = jnp.mod(i, period)
    return jnp.where(i >= n, period - i, i)
  raise ValueError(mode)


def bilinear(image: jax.Array, ys: jax.Array, xs: jax.Array, mode: str
             ) -> jax.Array:
  """Samples ``image`` ``[H, W, C]`` at float positions ``ys, xs`` ``[H, W]``
  with linear interpolation, the border extended by ``mode``."""
  h, w = image.shape[:2]
  y0 = jnp.floor(ys)
  x0 = jnp.floor(xs)
  fy = (ys - y0)[..., None]
  fx = (xs - x0)[..., None]
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  y1, x1 = (reflect_index(y0 + 1, h, mode), reflect_index(x0 + 1, w, mode))
  y0, x0 = reflect_index(y0, h, mode), reflect_index(x0, w, mode)
  top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
  bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
  return top * (1 - fy) + bottom * fy


# -------------------------------------------------------------------- colour

def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """``[..., 3]`` RGB in [0, 1] -> HSV in [0, 1] (scikit-image's convention:
  hue 0 where the pixel is grey, saturation 0 where it is black)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = jnp.max(rgb, -1)
  delta = v - jnp.min(rgb, -1)
  safe_delta = jnp.where(delta == 0, 1.0, delta)
  s = jnp.where(v == 0, 0.0, delta / jnp.where(v == 0, 1.0, v))
  # Where two channels tie for the maximum, blue wins over green over red,
  # as in scikit-image (the hue is the same either way).
  h = jnp.where(b == v, 4.0 + (r - g) / safe_delta,
                jnp.where(g == v, 2.0 + (b - r) / safe_delta,
                          (g - b) / safe_delta))
  h = jnp.where(delta == 0, 0.0, h)
  h = jnp.mod(h / 6.0, 1.0)
  return jnp.stack([h, s, v], -1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """Inverse of ``rgb_to_hsv`` (the usual six-sector formula)."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  sector = jnp.mod(sector, 6).astype(jnp.int32)
  p = v * (1 - s)
  q = v * (1 - f * s)
  t = v * (1 - (1 - f) * s)
  table = jnp.stack([
      jnp.stack([v, t, p], -1), jnp.stack([q, v, p], -1),
      jnp.stack([p, v, t], -1), jnp.stack([p, q, v], -1),
      jnp.stack([t, p, v], -1), jnp.stack([v, p, q], -1)], 0)
  return jnp.take_along_axis(table, sector[None, ..., None], 0)[0]


def grey(rgb: jax.Array) -> jax.Array:
  """``[H, W, 3]`` -> ``[H, W, 1]`` luma (OpenCV's RGB2GRAY weights)."""
  return jnp.tensordot(rgb, jnp.asarray(GREY_WEIGHTS, rgb.dtype), 1)[..., None]


# -------------------------------------------------------------- motion blur

def motion_taps(radius: float, sigma: float) -> np.ndarray:
  """The one-sided Gaussian weights of ImageMagick's MotionBlurImage:
  ``2*ceil(radius)+1`` taps, ``w_i ~ exp(-i^2 / (2 sigma^2))``, sum 1."""
  width = 2 * int(math.ceil(radius)) + 1
  i = np.arange(width, dtype=np.float64)
  k = np.exp(-(i * i) / (2.0 * sigma * sigma))
  return k / k.sum()


def motion_blur(image: jax.Array, radius: float, sigma: float,
                angle_deg: jax.Array) -> jax.Array:
  """Line blur of ``image`` ``[H, W, C]`` the way ImageMagick's
  MotionBlurImage computes it: output ``(y, x)`` is the weighted sum of the
  pixels at ``(y + round(i sin a), x + round(i cos a))`` for the taps ``i``
  of ``motion_taps`` (offsets rounded half up), the border clamped to the
  edge pixel (ImageMagick's default virtual-pixel method)."""
  taps = motion_taps(radius, sigma)
  h, w = image.shape[:2]
  rad = jnp.deg2rad(angle_deg.astype(jnp.float32))
  i = jnp.arange(len(taps), dtype=jnp.float32)
  # ceil(v - 0.5) is ImageMagick's rounding of the offsets.
  dx = jnp.ceil(i * jnp.cos(rad) - 0.5).astype(jnp.int32)
  dy = jnp.ceil(i * jnp.sin(rad) - 0.5).astype(jnp.int32)
  yy = jnp.arange(h)[:, None]
  xx = jnp.arange(w)[None, :]
  out = jnp.zeros_like(image)
  for t in range(len(taps)):
    ys = jnp.clip(yy + dy[t], 0, h - 1)
    xs = jnp.clip(xx + dx[t], 0, w - 1)
    out = out + float(taps[t]) * image[ys, xs]
  return out


def quantize(x: jax.Array) -> jax.Array:
  """Rounds ``[0, 1]`` values to the nearest of the 256 uint8 levels (what
  a PNG round trip does)."""
  return jnp.round(jnp.clip(x, 0, 1) * 255.0) / 255.0
