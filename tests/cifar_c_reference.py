"""make_cifar_c.py's maths written independently with numpy, scipy, PIL and
colorsys (no JAX): the reference the tests compare robustjax's corruptions
with, and the CPU baseline ``benchmarks/corruptions.py`` times.

``reference(name, x, severity, draws)`` takes the random draws as arguments,
so tests can pass the draws robustjax made; ``numpy_corrupt`` draws them with
a numpy generator instead. Where the reference needs what is not installed
here (ImageMagick, OpenCV, the frost photographs) the comments say what
stands in for it.
"""

import colorsys
import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

def ref_gaussian(x, sigma, mode="nearest", truncate=4.0):
  """skimage.filters.gaussian(..., multichannel=True) = scipy per channel."""
  sig = (sigma, sigma, 0) if x.ndim == 3 else sigma
  return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def ref_clipped_zoom(img, factor):
  h = img.shape[0]
  ch = int(np.ceil(h / factor))
  top = (h - ch) // 2
  zoom = (factor, factor, 1) if img.ndim == 3 else (factor, factor)
  img = ndimage.zoom(img[top:top + ch, top:top + ch], zoom, order=1)
  trim = (img.shape[0] - h) // 2
  return img[trim:trim + h, trim:trim + h]


def ref_motion_blur(x, radius, sigma, angle):
  """ImageMagick MotionBlurImage as a plain loop (edge virtual pixels)."""
  width = 2 * math.ceil(radius) + 1
  k = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)])
  k /= k.sum()
  a = math.radians(angle)
  h, w = x.shape[:2]
  out = np.zeros_like(x, dtype=np.float64)
  for i in range(width):
    ox = math.ceil(i * math.cos(a) - 0.5)
    oy = math.ceil(i * math.sin(a) - 0.5)
    ys = np.clip(np.arange(h) + oy, 0, h - 1)
    xs = np.clip(np.arange(w) + ox, 0, w - 1)
    out += k[i] * x[ys][:, xs]
  return np.round(np.clip(out, 0, 1) * 255) / 255  # 8-bit PNG round trip


def ref_hsv(x, fn):
  flat = x.reshape(-1, 3)
  out = np.array([colorsys.hsv_to_rgb(*fn(*colorsys.rgb_to_hsv(*p)))
                  for p in flat])
  return out.reshape(x.shape)


def ref_plasma(u, decay, mapsize=32):
  """Diamond-square with strided numpy writes; ``u[level]`` = 3 U(-1,1)."""
  m = np.zeros((mapsize, mapsize))
  step, wibble = mapsize, 100.0
  level = 0
  while step >= 2:
    half = step // 2
    w2 = wibble * wibble
    corner = m[0::step, 0::step]
    sq = corner + np.roll(corner, -1, axis=0)
    sq += np.roll(sq, -1, axis=1)
    m[half::step, half::step] = sq / 4 + w2 * u[level][0]
    dr = m[half::step, half::step]
    ul = m[0::step, 0::step]
    m[0::step, half::step] = (dr + np.roll(dr, 1, axis=0) + ul +
                              np.roll(ul, -1, axis=1)) / 4 + w2 * u[level][1]
    m[half::step, 0::step] = (dr + np.roll(dr, 1, axis=1) + ul +
                              np.roll(ul, -1, axis=0)) / 4 + w2 * u[level][2]
    step //= 2
    wibble /= decay
    level += 1
  m -= m.min()
  return m / m.max()


def ref_defocus_kernel(radius, alias):
  grid = np.arange(-8, 9)
  xx, yy = np.meshgrid(grid, grid)
  disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
  disk /= disk.sum()
  g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias ** 2))
  g /= g.sum()
  # cv2.GaussianBlur's default border is reflect-101 = scipy's 'mirror'.
  out = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
  return ndimage.correlate1d(out, g, axis=1, mode="mirror")


def reference(name, x, severity, draws):
  """make_cifar_c.py's maths for one image x (float64 [32, 32, 3] in [0, 1])
  given the draws; returns [0, 1] floats before the uint8 cast."""
  s = severity - 1
  if name == "gaussian_blur":
    return np.clip(ref_gaussian(x, [.4, .6, .7, .8, 1][s]), 0, 1)
  if name == "defocus_blur":
    kernel = ref_defocus_kernel(*[(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2),
                                  (1.5, 0.1)][s])
    out = np.stack([ndimage.correlate(x[..., c], kernel, mode="mirror")
                    for c in range(3)], -1)
    return np.clip(out, 0, 1)
  if name == "glass_blur":
    sigma, delta, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1),
                           (0.25, 1, 2), (0.4, 1, 2)][s]
    img = np.uint8(ref_gaussian(x, sigma) * 255)
    for it in range(iters):
      for h in range(32 - delta, delta, -1):
        for w in range(32 - delta, delta, -1):
          dx, dy = draws[it, h, w]
          hp, wp = h + dy, w + dx
          # The reference's statement, with its numpy-view semantics.
          img[h, w], img[hp, wp] = img[hp, wp], img[h, w]
    return np.clip(ref_gaussian(img / 255.0, sigma), 0, 1)
  if name == "motion_blur":
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s]
    return ref_motion_blur(x, radius, sigma, float(draws))
  if name == "zoom_blur":
    factors = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01),
               np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.01),
               np.arange(1, 1.26, 0.01)][s]
    x32 = x.astype(np.float32)
    out = np.zeros_like(x32)
    for f in factors:
      out += ref_clipped_zoom(x32, f)
    return np.clip((x32 + out) / (len(factors) + 1), 0, 1)
  if name == "fog":
    strength, decay = [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)][s]
    peak = x.max()
    y = x + strength * ref_plasma(draws, decay)[:32, :32, None]
    return np.clip(y * peak / (peak + strength), 0, 1)
  if name == "snow":
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s]
    layer = ref_clipped_zoom(draws["layer"][..., None].astype(np.float64),
                             c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8) / 255.0
    layer = ref_motion_blur(layer, c[4], c[5], float(draws["angle"]))
    xf = x.astype(np.float32)
    grey = (0.299 * xf[..., 0] + 0.587 * xf[..., 1] + 0.114 * xf[..., 2])
    xf = c[6] * xf + (1 - c[6]) * np.maximum(xf, grey[..., None] * 1.5 + 0.5)
    return np.clip(xf + layer + np.rot90(layer, k=2), 0, 1)
  if name == "spatter":  # mud only (4-5): water needs OpenCV
    c = [(0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)][s - 3]
    liquid = ref_gaussian(draws.astype(np.float64), c[2])
    liquid[liquid < c[3]] = 0
    m = ref_gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), c[4])
    m[m < 0.8] = 0
    color = np.array([63, 42, 20]) / 255.0 * m[..., None]
    return np.clip(x * (1 - m[..., None]) + color, 0, 1)
  if name == "brightness":
    c = [.05, .1, .15, .2, .3][s]
    return np.clip(ref_hsv(x, lambda h, s_, v: (h, s_, min(v + c, 1))), 0, 1)
  if name == "saturate":
    a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s]
    return np.clip(ref_hsv(x, lambda h, s_, v: (h, np.clip(s_ * a + b, 0, 1),
                                                 v)), 0, 1)
  if name == "contrast":
    c = [.75, .5, .4, .3, 0.15][s]
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - mean) * c + mean, 0, 1)
  if name == "elastic_transform":
    alpha, sigma, aff = (32 * v for v in [(0, 0, 0.08), (0.05, 0.2, 0.07),
                                          (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                          (0.1, 0.03, 0.03)][s])
    pts1 = np.float32([[26, 26], [26, 6], [6, 6]])
    pts2 = pts1 + draws["affine"]
    m = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T  # getAffineTransform
    inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    # cv2.warpAffine: bilinear, BORDER_REFLECT_101 = scipy 'mirror'.
    img = np.stack([ndimage.map_coordinates(x[..., c], [sy, sx], order=1,
                                            mode="mirror") for c in range(3)],
                   -1)
    dx = ref_gaussian(draws["dx"].astype(np.float64), sigma, "reflect", 3) * alpha
    dy = ref_gaussian(draws["dy"].astype(np.float64), sigma, "reflect", 3) * alpha
    out = np.stack([ndimage.map_coordinates(img[..., c], [yy + dy, xx + dx],
                                            order=1, mode="reflect")
                    for c in range(3)], -1)
    return np.clip(out, 0, 1)
  if name == "pixelate":
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s]
    pil = Image.fromarray(np.round(x * 255).astype(np.uint8))
    pil = pil.resize((int(32 * c), int(32 * c)), Image.BOX)
    return np.asarray(pil.resize((32, 32), Image.BOX)) / 255.0
  if name == "jpeg_compression":
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(
        buf, "JPEG", quality=[80, 65, 58, 50, 40][s])
    return np.asarray(Image.open(buf)) / 255.0
  raise KeyError(name)




# ------------------------------------------- whole corruptions with numpy RNG

def _frost_texture(rng):
  """Stand-in for a random 32x32 crop of a resized frost photograph: numpy
  has the same work to do (a crop and a blend), so the timing is fair."""
  big = rng.random((160, 160, 3))
  y, x = rng.integers(0, 128, size=2)
  return big[y:y + 32, x:x + 32]


def _water_spatter(x, liquid, intensity):
  """Spatter's water mode with scipy in place of OpenCV (Sobel edges,
  Euclidean distance transform, rank equalisation): the same kind of work."""
  levels = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
  grad = np.hypot(ndimage.sobel(levels.astype(float), 0),
                  ndimage.sobel(levels.astype(float), 1))
  dist = ndimage.distance_transform_edt(grad < 150)
  dist = np.minimum(dist, 20)
  dist = ndimage.uniform_filter(dist, 3).astype(np.uint8)
  ranks = np.searchsorted(np.sort(dist.ravel()), dist, side="right")
  dist = (255.0 * ranks / dist.size).astype(np.uint8)
  ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
  dist = np.clip(ndimage.correlate(dist.astype(float), ker, mode="mirror"),
                 0, 255)
  dist = ndimage.uniform_filter(dist, 3)
  m = levels * dist
  m = m / max(m.max(), 1e-12) * intensity
  color = np.array([175, 238, 238]) / 255.0
  return np.clip(x + m[..., None] * color, 0, 1)


def numpy_draws(name, rng, severity):
  """Draws shaped like robustjax's, from a numpy generator."""
  s = severity - 1
  if name == "glass_blur":
    iters = [1, 1, 1, 2, 2][s]
    return rng.integers(-1, 1, size=(iters, 32, 32, 2))
  if name == "motion_blur":
    return rng.uniform(-45, 45)
  if name == "fog":
    return [rng.uniform(-1, 1, (3, 2 ** i, 2 ** i)) for i in range(5)]
  if name == "snow":
    loc, scale = [(0.1, 0.2), (0.1, 0.2), (0.15, 0.3), (0.25, 0.3),
                  (0.3, 0.3)][s]
    return {"layer": rng.normal(loc, scale, (32, 32)),
            "angle": rng.uniform(-135, -45)}
  if name == "spatter":
    loc, scale = [(0.62, 0.1), (0.65, 0.1), (0.65, 0.3), (0.65, 0.1),
                  (0.65, 0.1)][s]
    return rng.normal(loc, scale, (32, 32))
  if name == "elastic_transform":
    aff = 32 * [0.08, 0.07, 0.06, 0.05, 0.03][s]
    return {"affine": rng.uniform(-aff, aff, (3, 2)),
            "dx": rng.uniform(-1, 1, (32, 32)),
            "dy": rng.uniform(-1, 1, (32, 32))}
  return None


def numpy_corrupt(name, x, severity, rng):
  """One image, uint8 [32, 32, 3] -> uint8, the CIFAR-10-C way (including
  the final truncating cast)."""
  s = severity - 1
  xf = x / 255.0
  if name == "gaussian_noise":
    out = xf + rng.normal(size=xf.shape, scale=[.04, .06, .08, .09, .10][s])
  elif name == "shot_noise":
    c = [500, 250, 100, 75, 50][s]
    out = rng.poisson(xf * c) / c
  elif name == "impulse_noise":
    amount = [.01, .02, .03, .05, .07][s]
    out = np.where(rng.random(xf.shape) < amount,
                   (rng.random(xf.shape) < 0.5).astype(float), xf)
  elif name == "speckle_noise":
    out = xf + xf * rng.normal(size=xf.shape,
                               scale=[.06, .1, .12, .16, .2][s])
  elif name == "brightness":
    c = [.05, .1, .15, .2, .3][s]
    out = fast_hsv_adjust(xf, 2, lambda v: np.clip(v + c, 0, 1))
  elif name == "saturate":
    a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s]
    out = fast_hsv_adjust(xf, 1, lambda v: np.clip(v * a + b, 0, 1))
  elif name == "frost":
    a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s]
    out = a * xf + b * _frost_texture(rng)
  elif name == "spatter" and severity <= 3:
    sigma, threshold, intensity = [(0.7, 0.7, 0.5), (0.8, 0.7, 0.5),
                                   (1, 0.69, 0.5)][s]
    liquid = ref_gaussian(numpy_draws(name, rng, severity), sigma)
    liquid[liquid < threshold] = 0
    out = _water_spatter(xf, liquid, intensity)
  else:
    out = reference(name, xf, severity, numpy_draws(name, rng, severity))
  return np.uint8(np.clip(out, 0, 1) * 255)


def fast_hsv_adjust(x, channel, fn):
  """Vectorised RGB -> HSV -> RGB (scikit-image's formulas) with ``fn``
  applied to one HSV channel: the benchmark's stand-in for skimage, which
  is not installed (the per-pixel colorsys version would be unfairly slow)."""
  v = x.max(-1)
  delta = v - x.min(-1)
  s = np.where(v == 0, 0, delta / np.where(v == 0, 1, v))
  d = np.where(delta == 0, 1, delta)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  h = np.where(b == v, 4 + (r - g) / d, np.where(g == v, 2 + (b - r) / d,
                                                 (g - b) / d))
  h = np.where(delta == 0, 0, (h / 6) % 1)
  hsv = [h, s, v]
  hsv[channel] = fn(hsv[channel])
  h, s, v = hsv
  i = np.floor(h * 6)
  f = h * 6 - i
  i = i.astype(int) % 6
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t),
                                       (p, q, v), (t, p, v), (v, p, q))]
  return np.choose(i[..., None], choices)
