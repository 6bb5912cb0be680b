"""VGG-16 for CIFAR, without BatchNorm (BN-free: the model has no batch_stats).

Thirteen 3x3 convs with bias and ReLU (config D: 64, 64 | 128, 128 |
256 x 3 | 512 x 3 | 512 x 3), global average pooling, then one dense layer
from 512 features to the logits. Two registered variants differ only in
their max-pools; their parameters have the same paths and shapes:

* ``vgg16``: a 2x2 max-pool after each of the five groups (the CIFAR VGG of
  kuangliu/pytorch-cifar, minus its BatchNorm layers). A 32x32 input is
  1x1 before the head.
* ``vgg16_rws``: no max-pool after the last group, four in all, as the VGG-16
  of the robust weight signatures code (VITA-Group/Robust_Weight_Signatures,
  ``models/vgg.py``). A 32x32 input is 2x2 before the head and is averaged
  (that code's ``AdaptiveAvgPool2d(1)``). The RWS recipe (configs/rws.py)
  uses this one.
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
# The RWS code's config D: the same convs without the last pool, so the
# head averages the last feature map (2x2 for a 32x32 input) where
# ``vgg16`` takes its maximum.
VGG16_RWS_LAYERS: tuple[Union[int, str], ...] = VGG16_LAYERS[:-1]


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
  """VGG classifier without BatchNorm: features, global average pool, dense.

  The global average pool keeps the head 512-wide at any input size (after
  five pools a 32x32 input is 1x1, where it is the identity; after four it
  is 2x2 and averaged).
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
  """VGG-16 without BN, five max-pools: 14.72M parameters at width 1 and 10
  classes."""
  return VGG(VGG16_LAYERS, num_classes, width, dtype, mean, std)


@register("vgg16_rws")
def vgg16_rws(num_classes: int, width: float, dtype: Dtype,
              mean: tuple[float, ...], std: tuple[float, ...]) -> VGG:
  """The RWS code's VGG-16 without BN, four max-pools (module doc); the
  same 14.72M parameters as ``vgg16``, a different function."""
  return VGG(VGG16_RWS_LAYERS, num_classes, width, dtype, mean, std)
