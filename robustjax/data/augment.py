"""On-device augmentation: random crop after zero padding, horizontal flip.

These run inside the jitted training step (with a key folded from the step),
so the host only ships uint8 rows and augmentation costs no host time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 ``[..., H, W, C]`` in [0, 255] -> float32 in [0, 1]; float
  images (already in [0, 1], e.g. adversarial ones) pass through as
  float32."""
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  return images.astype(jnp.float32) / 255.0


def crop_flip_params(key: jax.Array, batch_size: int, pad: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example crop offsets and flip decisions.

  Returns:
    ``(dy, dx, flip)``: int32 ``[B]`` offsets in ``[0, 2 * pad]`` into the
    padded image (uniform, as torchvision ``RandomCrop(padding=pad)``), and
    bool ``[B]`` flips with probability 0.5.
  """
  ky, kx, kf = jax.random.split(key, 3)
  dy = jax.random.randint(ky, (batch_size,), 0, 2 * pad + 1)
  dx = jax.random.randint(kx, (batch_size,), 0, 2 * pad + 1)
  flip = jax.random.bernoulli(kf, 0.5, (batch_size,))
  return dy, dx, flip


def crop_flip(images: jax.Array, dy: jax.Array, dx: jax.Array,
              flip: jax.Array, pad: int) -> jax.Array:
  """Applies given crops and flips.

  Args:
    images: ``[B, H, W, C]``, uint8 (scaled to [0, 1]) or float (kept as is).
    dy, dx: int ``[B]`` top-left corners of the crop in the padded image.
    flip: bool ``[B]``: mirror left-right after cropping.
    pad: zero padding on each side (static).

  Returns:
    float32 ``[B, H, W, C]``.
  """
  x = to_float(images) if images.dtype == jnp.uint8 else images.astype(
      jnp.float32)
  _, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def crop_one(img, y0, x0):
    return jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, c))

  x = jax.vmap(crop_one)(x, dy, dx)
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4, *,
                     flip: bool = True) -> jax.Array:
  """Random crop after zero padding by ``pad`` and random horizontal flip.

  Same distribution as torchvision ``RandomCrop(H, padding=pad)`` followed by
  ``RandomHorizontalFlip()``, drawn independently per example. Jit-able
  (``pad`` and ``flip`` are Python values) and deterministic for a key.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``, uint8 in [0, 255] or float in [0, 1].
    pad: zero padding on each side before cropping back to ``H x W``.
    flip: False turns flipping off (crop only).

  Returns:
    float32 ``[B, H, W, C]`` in [0, 1].
  """
  dy, dx, do_flip = crop_flip_params(key, images.shape[0], pad)
  if not flip:
    do_flip = jnp.zeros_like(do_flip)
  return crop_flip(images, dy, dx, do_flip, pad)
