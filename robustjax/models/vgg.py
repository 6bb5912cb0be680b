"""VGG-16 for CIFAR, without BatchNorm (BN-free: the model has no batch_stats).

Thirteen 3x3 convs with bias and ReLU in five groups, each group ending with
a 2x2 max-pool, then one dense layer from 512 features to the logits (the
CIFAR VGG of kuangliu/pytorch-cifar, minus its BatchNorm layers).
"""

from __future__ import annotations

from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.models.layers import (Dtype, Head, conv, global_avg_pool,
                                     normalize, scale_channels)
from robustjax.models.registry import register

POOL = "M"  # a 2x2 stride-2 max-pool in a layer list
VGG16_LAYERS: tuple[Union[int, str], ...] = (
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
    512, 512, 512, POOL, 512, 512, 512, POOL)


class VGGFeatures(nn.Module):
  """The conv stack: ints are conv3x3(+bias)-ReLU, ``POOL`` is a max-pool.

  Convs are named ``conv0``, ``conv1``, ... counting convs only.
  [B, H, W, C] -> [B, H / 2^pools, W / 2^pools, last channels].
  """

  layers: tuple[Union[int, str], ...]
  width: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    num_convs = 0
    for layer in self.layers:
      if layer == POOL:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = conv(scale_channels(layer, self.width), 3, use_bias=True,
                 dtype=self.dtype, name=f"conv{num_convs}")(x)
        x = nn.relu(x)
        num_convs += 1
    return x


class VGG(nn.Module):
  """VGG classifier without BatchNorm.

  After five pools a 32x32 input is 1x1, where global average pooling is the
  identity (so this equals the original flatten); a 64x64 input is 2x2 and
  is averaged, keeping the head 512-wide at any input size.
  Parameter paths: ``features/conv{0-12}``, ``head/dense``.
  x [B, H, W, 3] in [0, 1] -> float32 logits [B, num_classes].
  ``train`` is accepted for a uniform call signature and has no effect.
  """

  layers: tuple[Union[int, str], ...]
  num_classes: int = 10
  width: float = 1.0
  dtype: Dtype = jnp.float32
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout
    x = normalize(x, self.mean, self.std, self.dtype)
    x = VGGFeatures(self.layers, self.width, dtype=self.dtype,
                    name="features")(x)
    return Head(self.num_classes, dtype=self.dtype,
                name="head")(global_avg_pool(x))


@register("vgg16")
def vgg16(num_classes: int, width: float, dtype: Dtype,
          mean: tuple[float, ...], std: tuple[float, ...]) -> VGG:
  """VGG-16 without BN: 14.72M parameters at width 1 and 10 classes."""
  return VGG(VGG16_LAYERS, num_classes, width, dtype, mean, std)
