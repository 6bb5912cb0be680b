"""CIFAR-10-C corruptions in JAX: 19 types x 5 severities, on [0, 1] images.

  x_c = apply("fog", key, images, severity=3)   # float32 [B, H, W, C] -> same

Every corruption uses the constants of the CIFAR-10-C generation script
(hendrycks/robustness, make_cifar_c.py; the ImageNet-C ones differ) and is a
jit-compiled function of (key, images, severity), deterministic for a key;
each image gets its own key (``split(key, B)``). ``apply_per_example`` takes
the per-image keys directly, which is how evaluation makes results
independent of the batch size. Where the reference needs outside assets or
libraries (frost photographs, ImageMagick, OpenCV's Canny) this package has
equivalents; docs/corruptions.md says how close each one is.

Modules: ``noise.py``, ``blur.py``, ``weather.py``, ``digital.py``;
``_ops.py`` holds the shared filters and resampling.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.data.corruptions import blur, digital, noise, weather
from robustjax.errors import ConfigError

CorruptionFn = Callable[[jax.Array, jax.Array, int], jax.Array]

# Per-image functions, in CIFAR-10-C's file order (the 15 benchmark
# corruptions, then the 4 extra ones).
_FUNCTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "speckle_noise": noise.speckle_noise,
    "gaussian_blur": blur.gaussian_blur,
    "spatter": weather.spatter,
    "saturate": digital.saturate,
}

CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)
BENCHMARK_15: tuple[str, ...] = CORRUPTIONS[:15]
EXTRA_4: tuple[str, ...] = ("gaussian_blur", "spatter", "speckle_noise",
                            "saturate")
# RiFT's eval_ood.py averages these 18 (the 15 without glass_blur, plus the
# 4 extra), in its order.
RIFT_18: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "speckle_noise", "impulse_noise",
    "defocus_blur", "gaussian_blur", "motion_blur", "zoom_blur", "snow", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "spatter", "saturate", "frost")
NAMED_LISTS: dict[str, tuple[str, ...]] = {
    "benchmark15": BENCHMARK_15, "rift18": RIFT_18, "all19": CORRUPTIONS}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# Corruptions that run (in part) on the host through jax.pure_callback.
HOST_CORRUPTIONS: tuple[str, ...] = ("jpeg_compression",)


def check_name(name: str) -> None:
  if name not in _FUNCTIONS:
    raise ConfigError(f"unknown corruption {name!r}; choose one of "
                      f"{', '.join(CORRUPTIONS)}")


def check_severity(severity: int) -> None:
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
      or not 1 <= int(severity) <= 5:
    raise ConfigError(f"corruption severity {severity!r} is not an integer "
                      "in 1..5; pass 1, 2, 3, 4 or 5")


def resolve(names: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """A list name (``rift18``, ``benchmark15``, ``all19``), one corruption,
  a comma-separated string or a sequence of names -> a tuple of names."""
  if isinstance(names, str):
    if names in NAMED_LISTS:
      return NAMED_LISTS[names]
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = tuple(names)
  if not names:
    raise ConfigError("no corruptions given; name some, or one of the lists "
                      f"{', '.join(NAMED_LISTS)}")
  for name in names:
    check_name(name)
  return names


def _check_images(images) -> None:
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4:
    raise ConfigError(f"images must be a float array [B, H, W, C], got shape "
                      f"{shape}; add a batch axis with images[None]")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ConfigError(f"images must be floats in [0, 1], got {images.dtype}; "
                      "divide uint8 images by 255")
  if isinstance(images, jax.core.Tracer):
    return  # values unknown while tracing; checked when called eagerly
  lo, hi = float(jnp.min(images)), float(jnp.max(images))
  if lo < 0.0 or hi > 1.0:
    raise ConfigError(f"images must lie in [0, 1], got values in [{lo:.4g}, "
                      f"{hi:.4g}]; pass pixels scaled to [0, 1]")


@functools.lru_cache(maxsize=None)
def _batched(name: str, severity: int):
  fn = _FUNCTIONS[name]

  @jax.jit
  def run(keys, images):
    out = jax.vmap(lambda k, x: fn(k, x, severity))(keys, images)
    return out.astype(jnp.float32)
  return run


def batched_fn(name: str, severity: int
               ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The jitted ``(keys [B], images [B, H, W, C]) -> images`` of one
  corruption and severity, without input checks: for use inside other
  compiled functions (values cannot be checked while tracing)."""
  check_name(name)
  check_severity(severity)
  return _batched(name, int(severity))


def apply_per_example(name: str, keys: jax.Array, images: jax.Array,
                      severity: int) -> jax.Array:
  """Corrupts image i with ``keys[i]``.

  Args:
    name: one of ``CORRUPTIONS``.
    keys: ``[B]`` typed PRNG keys.
    images: float ``[B, H, W, C]`` in [0, 1].
    severity: 1..5 (a Python int: each severity compiles once).

  Returns:
    float32 ``[B, H, W, C]`` in [0, 1].
  """
  check_name(name)
  check_severity(severity)
  _check_images(images)
  return _batched(name, int(severity))(keys, images)


def apply(name: str, key: jax.Array, images: jax.Array, severity: int
          ) -> jax.Array:
  """Corrupts a batch: float32 ``[B, H, W, C]`` in [0, 1] -> the same.

  Image i uses ``jax.random.split(key, B)[i]``; the same key gives the same
  output. Raises ConfigError for an unknown name, a severity outside 1..5,
  or images that are not a rank-4 float array in [0, 1].
  """
  check_name(name)
  check_severity(severity)
  _check_images(images)
  keys = jax.random.split(key, images.shape[0])
  return _batched(name, int(severity))(keys, images)


# Added before truncating, so that float32 values up to this much below a
# level count as that level. The reference truncates float64 values. Where
# the exact result is a whole level (flat regions of a blur, HSV channels
# that move by whole levels), float32 lands an ulp or two (1.5e-5 at 255) on
# either side of it, and below it would drop a level that exact arithmetic
# keeps; the reference's float64 has the same ties at a far smaller scale,
# so neither side can be matched every time. Larger offsets also lift values
# that truly sit a hair below a level, which the reference truncates.
# Measured on 64 CIFAR-10 test images against the reference maths (every
# severity of gaussian, defocus, glass and zoom blur, fog, snow, brightness
# and saturate), 1e-5 disagreed least with the reference's uint8 values:
# 0.61% of them, against 0.67% with no offset, 0.62% with 2e-5 and 1.07%
# with 1e-3.
TRUNCATION_SLACK = 1e-5


def to_uint8(images: jax.Array, rounding: str = "floor") -> jax.Array:
  """[0, 1] floats -> uint8 levels. ``'floor'`` truncates as CIFAR-10-C's
  files do (``np.uint8(x * 255)``, up to ``TRUNCATION_SLACK`` for float32's
  rounding), ``'round'`` rounds."""
  scaled = jnp.clip(images, 0, 1) * 255.0
  if rounding == "floor":
    scaled = jnp.floor(scaled + TRUNCATION_SLACK)
  elif rounding == "round":
    scaled = jnp.round(scaled)
  else:
    raise ConfigError(f"rounding={rounding!r}; use 'floor' or 'round'")
  return scaled.astype(jnp.uint8)


__all__ = [
    "BENCHMARK_15", "CORRUPTIONS", "EXTRA_4", "HOST_CORRUPTIONS",
    "NAMED_LISTS", "RIFT_18", "SEVERITIES", "apply", "apply_per_example",
    "batched_fn",
    "resolve", "to_uint8",
]
