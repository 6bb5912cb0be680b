"""Digital corruptions: brightness, contrast, saturate, elastic transform,
pixelate, JPEG compression.

``fn(key, image [H, W, C], severity) -> image`` on [0, 1] floats with
CIFAR-10-C's constants. JPEG runs on the host (PIL, through
``jax.pure_callback``): it is the reference's own codec, so it matches it
exactly, at the price of a device-to-host copy on accelerators.
"""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from robustjax.data.corruptions import _ops

BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
# (scale, shift) of the HSV saturation
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))
# (alpha, sigma, affine) as fractions of the image size (32 in CIFAR-10-C).
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
           (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)


def brightness(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Adds ``c`` to the HSV value channel."""
  del key
  hsv = _ops.rgb_to_hsv(x)
  hsv = hsv.at[..., 2].set(jnp.clip(hsv[..., 2] + BRIGHTNESS[severity - 1],
                                    0, 1))
  return jnp.clip(_ops.hsv_to_rgb(hsv), 0, 1)


def contrast(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Pulls each channel towards its mean: ``(x - mean) * c + mean``."""
  del key
  mean = x.mean(axis=(0, 1), keepdims=True)
  return jnp.clip((x - mean) * CONTRAST[severity - 1] + mean, 0, 1)


def saturate(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``S * scale + shift`` on the HSV saturation channel."""
  del key
  scale, shift = SATURATE[severity - 1]
  hsv = _ops.rgb_to_hsv(x)
  hsv = hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * scale + shift, 0, 1))
  return jnp.clip(_ops.hsv_to_rgb(hsv), 0, 1)


# ----------------------------------------------------------------- elastic

def elastic_draws(key: jax.Array, shape: tuple[int, ...], severity: int
                  ) -> dict[str, jax.Array]:
  """``affine``: U(-a, a) ``[3, 2]`` moves of the three anchor points;
  ``dx``, ``dy``: U(-1, 1) ``[H, W]`` before smoothing."""
  affine = ELASTIC[severity - 1][2] * shape[0]
  k_a, k_x, k_y = jax.random.split(key, 3)
  return {"affine": jax.random.uniform(k_a, (3, 2), minval=-affine,
                                       maxval=affine),
          "dx": jax.random.uniform(k_x, shape[:2], minval=-1.0, maxval=1.0),
          "dy": jax.random.uniform(k_y, shape[:2], minval=-1.0, maxval=1.0)}


def elastic_anchors(h: int, w: int) -> np.ndarray:
  """float32 ``[3, 2]`` (x, y): the reference's three affine anchor points."""
  centre = np.float32((h, w)) // 2
  side = min(h, w) // 3
  return np.float32([centre + side, [centre[0] + side, centre[1] - side],
                     centre - side])


def elastic_from(x: jax.Array, draws: dict[str, jax.Array], severity: int,
                 *, subpixel: bool = True) -> jax.Array:
  """Random affine warp, then a smooth random displacement field.

  The affine maps the anchors to the moved anchors and is applied as
  ``cv2.warpAffine`` does (each output pixel samples the inverse map,
  bilinear, reflect-101 border; ``subpixel`` rounds the sampling positions
  to 1/32 pixel like OpenCV's interpolation tables). The displacement is
  ``alpha * gaussian(U(-1, 1), sigma)`` ('reflect' border, truncated at 3
  sigma), sampled bilinearly with scipy's 'reflect' border.
  """
  h, w = x.shape[:2]
  alpha, sigma, _ = (v * h for v in ELASTIC[severity - 1])
  src = jnp.asarray(elastic_anchors(h, w))
  dst = src + draws["affine"]
  ones = jnp.ones((3, 1), jnp.float32)
  # M (2x3) with M @ [p, 1] = dst for the three anchors p.
  m = jnp.linalg.solve(jnp.concatenate([src, ones], 1), dst).T
  inv_a = jnp.linalg.inv(m[:, :2])
  inv_b = -inv_a @ m[:, 2]
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing="ij")
  sx = inv_a[0, 0] * xx + inv_a[0, 1] * yy + inv_b[0]
  sy = inv_a[1, 0] * xx + inv_a[1, 1] * yy + inv_b[1]
  if subpixel:
    sx, sy = jnp.round(sx * 32) / 32, jnp.round(sy * 32) / 32
  x = _ops.bilinear(x, sy, sx, "reflect101")

  dx = _ops.gaussian_filter(draws["dx"], sigma, "reflect", 3.0) * alpha
  dy = _ops.gaussian_filter(draws["dy"], sigma, "reflect", 3.0) * alpha
  return jnp.clip(_ops.bilinear(x, yy + dy, xx + dx, "reflect"), 0, 1)


def elastic_transform(key: jax.Array, x: jax.Array, severity: int
                      ) -> jax.Array:
  return elastic_from(x, elastic_draws(key, x.shape, severity), severity)


# ---------------------------------------------------------------- pixelate

@functools.lru_cache(maxsize=None)
def box_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float64 ``[n_out, n_in]``: PIL's BOX resampling along one axis.

  Output pixel i averages the input pixels whose centres fall in its
  footprint ``[(i + 0.5) s - s/2, (i + 0.5) s + s/2)`` with ``s = n_in /
  n_out`` (when enlarging, the footprint is one input pixel wide, which
  makes it nearest-neighbour).
  """
  scale = n_in / n_out
  width = max(scale, 1.0)
  a = np.zeros((n_out, n_in))
  for i in range(n_out):
    centre = (i + 0.5) * scale
    for j in range(n_in):
      t = (j + 0.5 - centre) / width
      if -0.5 <= t < 0.5:
        a[i, j] = 1.0
    a[i] /= a[i].sum()
  return a


def _round_half_up(x: jax.Array) -> jax.Array:
  """``floor(x + 0.5)``: how Pillow's 8-bit resampling rounds (it adds half
  a unit before its fixed-point shift), where ``jnp.round`` would send
  halves to the even neighbour."""
  return jnp.floor(x + 0.5)


def _resize_box(x: jax.Array, h_out: int, w_out: int) -> jax.Array:
  """BOX resize of ``[H, W, C]`` uint8-level floats (in 0..255), width
  first, rounding half up to uint8 after each pass as Pillow does for 8-bit
  images.

  For pixelate's sizes every output pixel averages one or two input pixels
  (weights 1 or 1/2), which Pillow's 22-bit fixed-point coefficients hold
  exactly, as does float32: the result equals Pillow's bit for bit.
  """
  h, w = x.shape[:2]
  hi = jax.lax.Precision.HIGHEST
  cols = jnp.asarray(box_resize_matrix(w, w_out), jnp.float32)
  rows = jnp.asarray(box_resize_matrix(h, h_out), jnp.float32)
  x = _round_half_up(jnp.einsum("ij,hjc->hic", cols, x, precision=hi))
  return _round_half_up(jnp.einsum("ij,jwc->iwc", rows, x, precision=hi))


def pixelate(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """BOX downscale to ``int(size * c)`` and BOX upscale back."""
  del key
  h, w = x.shape[:2]
  c = PIXELATE[severity - 1]
  levels = jnp.round(jnp.clip(x, 0, 1) * 255.0)
  small = _resize_box(levels, int(h * c), int(w * c))
  return _resize_box(small, h, w) / 255.0


# -------------------------------------------------------------------- jpeg

def jpeg_host(images: np.ndarray, quality: int) -> np.ndarray:
  """PIL JPEG encode/decode of float ``[..., H, W, 3]`` in [0, 1] (rounded to
  uint8 first), on the host; returns float32 of the same shape."""
  images = np.asarray(images)
  flat = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
  flat = flat.reshape((-1,) + images.shape[-3:])
  out = np.empty(flat.shape, np.float32)
  for i, img in enumerate(flat):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    out[i] = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0
  return out.reshape(images.shape)


def jpeg_compression(key: jax.Array, x: jax.Array, severity: int
                     ) -> jax.Array:
  """PIL JPEG at CIFAR-10-C's quality (the reference codec, on the host)."""
  del key
  quality = JPEG_QUALITY[severity - 1]
  # expand_dims: under vmap the callback receives the whole batch at once.
  return jax.pure_callback(
      functools.partial(jpeg_host, quality=quality),
      jax.ShapeDtypeStruct(x.shape, jnp.float32), x.astype(jnp.float32),
      vmap_method="expand_dims")
