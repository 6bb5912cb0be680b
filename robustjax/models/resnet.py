"""CIFAR ResNets: post-activation ResNet-18/34 and pre-activation ResNet-18.

Both follow the CIFAR variant (kuangliu/pytorch-cifar, Wong et al. 2020,
Rice et al. 2020): a 3x3 stride-1 stem and no max-pool, so a 32x32 input
reaches the last stage at 4x4; four stages of BasicBlocks with 64, 128, 256,
512 channels (times ``width``) and strides 1, 2, 2, 2; global average pooling
and one dense layer.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.models.layers import (ConvBN, Dtype, Head, Stage,
                                     activation_fn, batch_norm, conv,
                                     global_avg_pool, normalize,
                                     scale_channels)
from robustjax.models.registry import register

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


def _needs_projection(x: jax.Array, features: int, strides: int) -> bool:
  """True when the identity shortcut cannot be added to the block output."""
  return strides != 1 or x.shape[-1] != features


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU (He et al. 2016a).

  The shortcut is the identity, or a 1x1 conv + BN (``shortcut/conv``,
  ``shortcut/bn``) when the stride or channel count changes.
  [B, H, W, C_in] -> [B, H / strides, W / strides, features].
  """

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = conv(self.features, 3, strides=self.strides, dtype=self.dtype,
             name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = batch_norm(train, dtype=self.dtype, name="bn2")(y)
    shortcut = x
    if _needs_projection(x, self.features, self.strides):
      shortcut = ConvBN(self.features, 1, self.strides, dtype=self.dtype,
                        name="shortcut")(x, train)
    return nn.relu(y + shortcut)


class PreActBlock(nn.Module):
  """BN-act-conv3x3-BN-act-conv3x3, plus shortcut (He et al. 2016b).

  When the shape changes, the shortcut is a conv without BN
  (``shortcut/conv``) whose input and kernel ``shortcut`` picks (see
  ``SHORTCUTS``; default: 1x1 on the pre-activated input); otherwise it is
  the raw input. No activation after the addition: the next block (or the
  final BN-act) does it. ``activation`` names the nonlinearity and
  ``padding`` the conv padding rule (``layers.conv``).
  [B, H, W, C_in] -> [B, H / strides, W / strides, features].
  """

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  activation: str = "relu"
  padding: str = "torch"
  shortcut: str = "preact"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    act = activation_fn(self.activation)
    pre = act(batch_norm(train, dtype=self.dtype, name="bn1")(x))
    shortcut = x
    if _needs_projection(x, self.features, self.strides):
      kernel = 3 if self.shortcut == "raw3x3" else 1
      source = pre if self.shortcut == "preact" else x
      shortcut = ConvBN(self.features, kernel, self.strides, use_bn=False,
                        dtype=self.dtype, padding=self.padding,
                        name="shortcut")(source, train)
    y = conv(self.features, 3, strides=self.strides, padding=self.padding,
             dtype=self.dtype, name="conv1")(pre)
    y = act(batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = conv(self.features, 3, padding=self.padding, dtype=self.dtype,
             name="conv2")(y)
    return y + shortcut


class ResNet(nn.Module):
  """Post-activation CIFAR ResNet.

  Parameter paths: ``stem/{conv,bn}``, ``stage{1-4}/block{j}/{conv1,bn1,
  conv2,bn2}``, ``stage{s}/block0/shortcut/{conv,bn}``, ``head/dense``.
  x [B, H, W, 3] in [0, 1] -> float32 logits [B, num_classes].
  """

  stage_sizes: tuple[int, ...]
  num_classes: int = 10
  width: float = 1.0
  dtype: Dtype = jnp.float32
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = normalize(x, self.mean, self.std, self.dtype)
    x = ConvBN(scale_channels(STAGE_CHANNELS[0], self.width), 3,
               dtype=self.dtype, name="stem")(x, train)
    x = nn.relu(x)
    for i, (size, channels, strides) in enumerate(
        zip(self.stage_sizes, STAGE_CHANNELS, STAGE_STRIDES)):
      x = Stage(BasicBlock, scale_channels(channels, self.width), size,
                strides, dtype=self.dtype, name=f"stage{i + 1}")(x, train)
    return Head(self.num_classes, dtype=self.dtype,
                name="head")(global_avg_pool(x))


class PreActResNet(nn.Module):
  """Pre-activation CIFAR ResNet (Wong et al. 2020; Rice et al. 2020).

  The stem is a bare conv (the first block's BN-act follows it). With
  ``final_bn`` a final BN-act normalises the output of the last block, which
  is a raw sum; without it (Wong et al.'s PreActResNet) that sum is pooled
  directly. ``activation``, ``padding`` and ``shortcut`` are the blocks'
  options (``PreActBlock``).
  Parameter paths: ``stem/conv``, ``stage{1-4}/block{j}/{bn1,conv1,bn2,
  conv2}``, ``stage{s}/block0/shortcut/conv``, ``final_bn`` (with
  ``final_bn``), ``head/dense``.
  x [B, H, W, 3] in [0, 1] -> float32 logits [B, num_classes].
  """

  stage_sizes: tuple[int, ...]
  num_classes: int = 10
  width: float = 1.0
  dtype: Dtype = jnp.float32
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)
  activation: str = "relu"
  padding: str = "torch"
  shortcut: str = "preact"
  final_bn: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = normalize(x, self.mean, self.std, self.dtype)
    x = ConvBN(scale_channels(STAGE_CHANNELS[0], self.width), 3, use_bn=False,
               dtype=self.dtype, padding=self.padding, name="stem")(x, train)
    block = functools.partial(PreActBlock, activation=self.activation,
                              padding=self.padding, shortcut=self.shortcut)
    for i, (size, channels, strides) in enumerate(
        zip(self.stage_sizes, STAGE_CHANNELS, STAGE_STRIDES)):
      x = Stage(block, scale_channels(channels, self.width), size,
                strides, dtype=self.dtype, name=f"stage{i + 1}")(x, train)
    if self.final_bn:
      x = activation_fn(self.activation)(
          batch_norm(train, dtype=self.dtype, name="final_bn")(x))
    return Head(self.num_classes, dtype=self.dtype,
                name="head")(global_avg_pool(x))


@register("resnet18")
def resnet18(num_classes: int, width: float, dtype: Dtype,
             mean: tuple[float, ...], std: tuple[float, ...]) -> ResNet:
  """ResNet-18: BasicBlocks [2, 2, 2, 2]; 11.17M parameters at width 1."""
  return ResNet((2, 2, 2, 2), num_classes, width, dtype, mean, std)


@register("resnet34")
def resnet34(num_classes: int, width: float, dtype: Dtype,
             mean: tuple[float, ...], std: tuple[float, ...]) -> ResNet:
  """ResNet-34: BasicBlocks [3, 4, 6, 3]; 21.28M parameters at width 1."""
  return ResNet((3, 4, 6, 3), num_classes, width, dtype, mean, std)


@register("preact_resnet18", options=dict(
    activation="relu", padding="torch", shortcut="preact", final_bn=True))
def preact_resnet18(num_classes: int, width: float, dtype: Dtype,
                    mean: tuple[float, ...], std: tuple[float, ...],
                    **options) -> PreActResNet:
  """Pre-activation ResNet-18: PreActBlocks [2, 2, 2, 2]. Options:
  ``activation``, ``padding``, ``shortcut``, ``final_bn`` (``PreActResNet``);
  the defaults are PreActBlockV2 with a final BN-ReLU."""
  return PreActResNet((2, 2, 2, 2), num_classes, width, dtype, mean, std,
                      **options)
