"""Weather corruptions: snow, frost, fog, spatter.

``fn(key, image [H, W, C], severity) -> image`` on [0, 1] floats with
CIFAR-10-C's constants. Fog and mud spatter follow the reference maths
exactly given the same random draws; snow does too up to ImageMagick's motion
blur (re-implemented, see ``_ops.motion_blur``); frost (no texture photos
here) and water spatter (no OpenCV Canny) are equivalents, documented in
docs/corruptions.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.data.corruptions import _ops

# (loc, scale, zoom, threshold, blur radius, blur sigma, mix)
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
# (image weight, frost weight)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
# (strength, wibble decay)
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
# (loc, scale, sigma, threshold, intensity, mode): mode 0 water, 1 mud.
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
           (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
           (0.65, 0.1, 0.5, 0.68, 0.6, 1))
WATER_RGB = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD_RGB = (63 / 255, 42 / 255, 20 / 255)


# --------------------------------------------------------------------- fog

def plasma_size(h: int, w: int) -> int:
  """The reference uses a 32x32 map; larger images get the next power of 2."""
  return max(32, 1 << (max(h, w) - 1).bit_length())


def plasma_draws(key: jax.Array, mapsize: int) -> list[jax.Array]:
  """Per level (step mapsize, mapsize/2, ..., 2): U(-1, 1) ``[3, n, n]``
  with ``n = mapsize / step`` (squares, then the two diamond sets)."""
  sizes = [4 ** i for i in range(int(np.log2(mapsize)))]
  # One draw, sliced: a random call per level compiled ~10x slower on CPU.
  flat = jax.random.uniform(key, (3 * sum(sizes),), minval=-1.0, maxval=1.0)
  out, start = [], 0
  for size in sizes:
    n = int(np.sqrt(size))
    out.append(flat[start:start + 3 * size].reshape(3, n, n))
    start += 3 * size
  return out


def plasma_fractal(draws: list[jax.Array], mapsize: int, decay: float
                   ) -> jax.Array:
  """Diamond-square height map ``[mapsize, mapsize]`` in [0, 1].

  Each new point is the mean of its four neighbours (wrapping around) plus
  ``wibble * U(-wibble, wibble)``; wibble starts at 100 and is divided by
  ``decay`` at each halving of the step.
  """
  # The map at the current step is the grid g of its known points; each
  # level interleaves g with the three new point sets into a grid twice as
  # fine (no scatters: they compile slowly under vmap).
  g = jnp.zeros((1, 1), jnp.float32)
  wibble = 100.0
  for u in draws:
    amp = wibble * wibble
    squares = g + jnp.roll(g, -1, 0)
    squares = (squares + jnp.roll(squares, -1, 1)) / 4 + amp * u[0]
    left = squares + jnp.roll(squares, 1, 0) + g + jnp.roll(g, -1, 1)
    left = left / 4 + amp * u[1]    # points (row of g, between columns)
    top = squares + jnp.roll(squares, 1, 1) + g + jnp.roll(g, -1, 0)
    top = top / 4 + amp * u[2]      # points (between rows, column of g)
    n = g.shape[0]
    even_rows = jnp.stack([g, left], -1).reshape(n, 2 * n)
    odd_rows = jnp.stack([top, squares], -1).reshape(n, 2 * n)
    g = jnp.stack([even_rows, odd_rows], 1).reshape(2 * n, 2 * n)
    wibble /= decay
  m = g
  m = m - m.min()
  return m / m.max()


def fog_from(x: jax.Array, draws: list[jax.Array], severity: int
             ) -> jax.Array:
  strength, decay = FOG[severity - 1]
  h, w = x.shape[:2]
  plasma = plasma_fractal(draws, plasma_size(h, w), decay)[:h, :w, None]
  peak = x.max()
  return jnp.clip((x + strength * plasma) * peak / (peak + strength), 0, 1)


def fog(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Plasma-fractal haze, then rescaled so the brightest value stays put."""
  return fog_from(x, plasma_draws(key, plasma_size(*x.shape[:2])), severity)


# -------------------------------------------------------------------- snow

def snow_draws(key: jax.Array, shape: tuple[int, ...], severity: int
               ) -> dict[str, jax.Array]:
  """``layer``: N(loc, scale) ``[H, W]``; ``angle``: U(-135, -45) degrees."""
  loc, scale = SNOW[severity - 1][:2]
  k_layer, k_angle = jax.random.split(key)
  return {"layer": loc + scale * jax.random.normal(k_layer, shape[:2]),
          "angle": jax.random.uniform(k_angle, (), minval=-135.0,
                                      maxval=-45.0)}


def snow_from(x: jax.Array, draws: dict[str, jax.Array], severity: int
              ) -> jax.Array:
  _, _, zoom, threshold, radius, sigma, mix = SNOW[severity - 1]
  size = x.shape[0]
  a = _ops.clipped_zoom_matrix(size, float(zoom))
  layer = _ops.apply_matrix(draws["layer"], a, a)
  layer = jnp.where(layer < threshold, 0.0, layer)
  # uint8 cast (truncation) before the PNG hand-over to ImageMagick.
  layer = jnp.floor(jnp.clip(layer, 0, 1) * 255.0) / 255.0
  layer = _ops.quantize(_ops.motion_blur(layer[..., None], radius, sigma,
                                         draws["angle"]))
  x = mix * x + (1 - mix) * jnp.maximum(x, _ops.grey(x) * 1.5 + 0.5)
  return jnp.clip(x + layer + layer[::-1, ::-1], 0, 1)


def snow(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Zoomed, thresholded Gaussian flakes, motion-blurred, added with their
  180-degree rotation to a brightened image."""
  return snow_from(x, snow_draws(key, x.shape, severity), severity)


# ------------------------------------------------------------------- frost

def _line_blur(x: jax.Array, taps: np.ndarray, dy: int, dx: int
               ) -> jax.Array:
  """One-sided line blur of ``x`` ``[H, W]`` along the static direction
  ``(dy, dx)`` (zero outside the image): shifted slices, no gathers."""
  h, w = x.shape
  r = len(taps)
  padded = jnp.pad(x, r)
  out = 0.0
  for i, t in enumerate(taps):
    out = out + float(t) * padded[r + i * dy:r + i * dy + h,
                                  r + i * dx:r + i * dx + w]
  return out


_NEEDLE_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1),
                      (-1, 0), (-1, 1))


def frost_texture(key: jax.Array, h: int, w: int) -> jax.Array:
  """A procedural ice texture ``[h, w, 3]`` in [0, 1], standing in for the
  reference's frost photographs (which robustjax cannot ship).

  Fine fractal haze (a plasma map with slow decay) plus crystal needles:
  sparse bright seeds smeared along the 8 compass directions with random
  weights (a few directions dominate in each image), pale blue-white like
  the photographs. Its mean (~0.5) and spread were set by eye, not fitted
  to the photographs.
  """
  size = plasma_size(h, w)
  k_plasma, k_rest = jax.random.split(key)
  haze = plasma_fractal(plasma_draws(k_plasma, size), size, 1.4)[:h, :w]
  # One uniform draw for the rest (separate calls compile much slower).
  n_dir = len(_NEEDLE_DIRECTIONS)
  u = jax.random.uniform(k_rest, (h * w + n_dir + 3,))
  seeds = (u[:h * w].reshape(h, w) < 0.06).astype(jnp.float32)
  weights = u[h * w:h * w + n_dir] ** 4
  weights = 2.0 * weights / weights.sum()
  taps = _ops.motion_taps(6, 3.0)
  needles = sum(weights[i] * _line_blur(seeds, taps, dy, dx)
                for i, (dy, dx) in enumerate(_NEEDLE_DIRECTIONS))
  needles = jnp.clip(needles * 2.5, 0, 1)
  ice = jnp.clip(0.25 + 0.45 * haze + 0.55 * needles, 0, 1)
  tint = jnp.asarray((0.86, 0.93, 1.0)) + 0.04 * (2 * u[-3:] - 1)
  return jnp.clip(ice[..., None] * tint, 0, 1)


def frost(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """``clip(a * x + b * frost)`` with a procedural frost texture."""
  a, b = FROST[severity - 1]
  texture = frost_texture(key, *x.shape[:2])
  return jnp.clip(a * x + b * texture, 0, 1)


# ----------------------------------------------------------------- spatter

def spatter_draws(key: jax.Array, shape: tuple[int, ...], severity: int
                  ) -> jax.Array:
  """The liquid layer before blurring: N(loc, scale) ``[H, W]``."""
  loc, scale = SPATTER[severity - 1][:2]
  return loc + scale * jax.random.normal(key, shape[:2])


@functools.lru_cache(maxsize=None)
def _chamfer_offsets() -> tuple[tuple[int, int, float], ...]:
  # OpenCV's 5x5 DIST_L2 mask: 1 (edge), 1.4 (diagonal), 2.1969 (knight).
  out = []
  for dy in range(-2, 3):
    for dx in range(-2, 3):
      ady, adx = sorted((abs(dy), abs(dx)))
      cost = {(0, 1): 1.0, (1, 1): 1.4, (1, 2): 2.1969}.get((ady, adx))
      if cost is not None:
        out.append((dy, dx, cost))
  return tuple(out)


def _chamfer_distance(zero: jax.Array, cap: float) -> jax.Array:
  """Distance to the nearest True pixel of ``zero`` ``[H, W]`` under the 5x5
  chamfer metric, capped at ``cap`` (shortest paths by relaxation: ``cap``
  rounds suffice because every move costs at least 1)."""
  h, w = zero.shape
  big = 1e4

  def relax(_, d):
    padded = jnp.pad(d, 2, constant_values=big)
    best = d
    for dy, dx, cost in _chamfer_offsets():
      shifted = padded[2 + dy:2 + dy + h, 2 + dx:2 + dx + w]
      best = jnp.minimum(best, shifted + cost)
    return best
  # A loop, not unrolled: 20 unrolled rounds took ~30 s to compile on CPU.
  d = jax.lax.fori_loop(0, int(cap), relax, jnp.where(zero, 0.0, big))
  return jnp.minimum(d, cap)


def _box3(x: jax.Array) -> jax.Array:
  """``cv2.blur(x, (3, 3))``: 3x3 mean, reflect-101 border."""
  k = np.full(3, 1 / 3)
  return _ops.correlate1d(_ops.correlate1d(x, k, 0, "reflect101"), k, 1,
                          "reflect101")


def _equalize_hist(x: jax.Array) -> jax.Array:
  """``cv2.equalizeHist`` of integer levels ``x`` ``[H, W]`` (float):
  ``round(255 * (cdf(v) - cdf(min)) / (N - cdf(min)))``."""
  flat = jnp.sort(x.reshape(-1))
  n = flat.shape[0]
  cdf = jnp.searchsorted(flat, x, side="right").astype(jnp.float32)
  cdf_min = jnp.searchsorted(flat, flat[0], side="right").astype(jnp.float32)
  denom = jnp.maximum(n - cdf_min, 1.0)
  out = jnp.round((cdf - cdf_min) * 255.0 / denom)
  return jnp.where(n - cdf_min > 0, out, x)


def _water(x: jax.Array, liquid: jax.Array, intensity: float) -> jax.Array:
  """Water drops: shading from the distance to the drops' outlines.

  The reference finds the outlines with OpenCV's Canny detector; here they
  are the drop pixels with a 4-neighbour outside the drops (on these
  thresholded blobs, whose edges jump from 0 to >= 0.68, Canny also marks
  the blob outlines, so the two agree up to which side of the jump the
  one-pixel line falls). The rest follows the reference's steps: chamfer
  distance (OpenCV's 5x5 L2 mask) capped at 20, 3x3 box blur, histogram
  equalisation, the emboss kernel with uint8 saturation, another box blur.
  """
  levels = jnp.floor(jnp.clip(liquid, 0, 1) * 255.0)  # uint8 cast
  inside = levels > 0
  pad = jnp.pad(inside, 1, mode="edge")
  outside_nb = (~pad[:-2, 1:-1] | ~pad[2:, 1:-1] | ~pad[1:-1, :-2]
                | ~pad[1:-1, 2:])
  edges = inside & outside_nb
  dist = _chamfer_distance(edges, 20.0)
  dist = jnp.floor(_box3(dist))
  dist = _equalize_hist(dist)
  emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
  dist = _ops.filter2d(dist[..., None], emboss, "reflect101")[..., 0]
  dist = jnp.clip(jnp.round(dist), 0, 255)
  dist = _box3(dist)
  m = levels * dist
  peak = m.max()
  m = jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0) * intensity
  return jnp.clip(x + m[..., None] * jnp.asarray(WATER_RGB), 0, 1)


def _mud(x: jax.Array, liquid: jax.Array, threshold: float,
         intensity: float) -> jax.Array:
  m = (liquid > threshold).astype(jnp.float32)
  m = _ops.gaussian_filter(m, intensity)
  m = jnp.where(m < 0.8, 0.0, m)[..., None]
  return jnp.clip(x * (1 - m) + jnp.asarray(MUD_RGB) * m, 0, 1)


def spatter_from(x: jax.Array, noise: jax.Array, severity: int
                 ) -> jax.Array:
  _, _, sigma, threshold, intensity, mode = SPATTER[severity - 1]
  liquid = _ops.gaussian_filter(noise, sigma)
  liquid = jnp.where(liquid < threshold, 0.0, liquid)
  if mode == 0:
    return _water(x, liquid, intensity)
  return _mud(x, liquid, threshold, intensity)


def spatter(key: jax.Array, x: jax.Array, severity: int) -> jax.Array:
  """Water drops (severities 1-3) or mud (4-5) on the lens."""
  return spatter_from(x, spatter_draws(key, x.shape, severity), severity)
