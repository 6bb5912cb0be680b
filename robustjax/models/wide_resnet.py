"""Pre-activation WideResNets (Zagoruyko & Komodakis 2016), the TRADES/MART
variant used throughout the adversarial-robustness literature.

WRN-d-k: a 3x3 stem conv with 16 channels, then three stages of (d - 4) / 6
pre-activation blocks with 16k, 32k, 64k channels and strides 1, 2, 2, then a
final BN-ReLU, global average pooling and one dense layer. No dropout (the
TRADES/MART recipes train with drop rate 0).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.models.layers import (ConvBN, Dtype, Head, Stage,
                                     activation_fn, batch_norm,
                                     global_avg_pool, normalize,
                                     scale_channels)
from robustjax.models.registry import register
from robustjax.models.resnet import PreActBlock

STEM_CHANNELS = 16
STAGE_BASE_CHANNELS = (16, 32, 64)  # times the widen factor
STAGE_STRIDES = (1, 2, 2)


class WideResNet(nn.Module):
  """WRN-depth-widen_factor with pre-activation blocks.

  The block is the same as the pre-activation ResNet's: when the shape
  changes (the first block of each stage, including stage 1 where 16 channels
  become 16k) a bias-free 1x1 conv on the pre-activated input is the shortcut.
  ``activation`` (``relu``, ``silu``/``swish``) is used everywhere and
  ``padding`` is the conv padding rule (``layers.conv``: ``torch`` for the
  TRADES/MART WideResNet, ``same`` for DeepMind's).
  Parameter paths: ``stem/conv``, ``stage{1-3}/block{j}/{bn1,conv1,bn2,
  conv2}``, ``stage{s}/block0/shortcut/conv``, ``final_bn``, ``head/dense``.
  x [B, H, W, 3] in [0, 1] -> float32 logits [B, num_classes].
  """

  depth: int
  widen_factor: int
  num_classes: int = 10
  width: float = 1.0
  dtype: Dtype = jnp.float32
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)
  activation: str = "relu"
  padding: str = "torch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # Each block has two convs; the stem conv and the head make up the 4.
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}")
    blocks_per_stage = (self.depth - 4) // 6
    x = normalize(x, self.mean, self.std, self.dtype)
    x = ConvBN(scale_channels(STEM_CHANNELS, self.width), 3, use_bn=False,
               dtype=self.dtype, padding=self.padding, name="stem")(x, train)
    block = functools.partial(PreActBlock, activation=self.activation,
                              padding=self.padding)
    for i, (base, strides) in enumerate(zip(STAGE_BASE_CHANNELS,
                                            STAGE_STRIDES)):
      channels = scale_channels(base * self.widen_factor, self.width)
      x = Stage(block, channels, blocks_per_stage, strides,
                dtype=self.dtype, name=f"stage{i + 1}")(x, train)
    x = activation_fn(self.activation)(
        batch_norm(train, dtype=self.dtype, name="final_bn")(x))
    return Head(self.num_classes, dtype=self.dtype,
                name="head")(global_avg_pool(x))


# The options of every WideResNet factory; ``wrn`` adds depth and widen.
_OPTIONS = dict(activation="relu", padding="torch")


@register("wrn", options=dict(depth=28, widen=10, **_OPTIONS))
def wrn(num_classes: int, width: float, dtype: Dtype,
        mean: tuple[float, ...], std: tuple[float, ...], *, depth: int,
        widen: int, **options) -> WideResNet:
  """WRN-depth-widen for any depth 6n + 4 and integer widen factor (e.g.
  WRN-34-20, which ``width`` cannot express because it also scales the
  16-channel stem); options ``activation`` and ``padding``."""
  return WideResNet(depth, widen, num_classes, width, dtype, mean, std,
                    **options)


@register("wrn34_10", options=_OPTIONS)
def wrn34_10(num_classes: int, width: float, dtype: Dtype,
             mean: tuple[float, ...], std: tuple[float, ...],
             **options) -> WideResNet:
  """WRN-34-10: 5 blocks per stage, 160/320/640 channels; 46.16M parameters."""
  return WideResNet(34, 10, num_classes, width, dtype, mean, std, **options)


@register("wrn28_10", options=_OPTIONS)
def wrn28_10(num_classes: int, width: float, dtype: Dtype,
             mean: tuple[float, ...], std: tuple[float, ...],
             **options) -> WideResNet:
  """WRN-28-10: 4 blocks per stage, 160/320/640 channels; 36.48M parameters."""
  return WideResNet(28, 10, num_classes, width, dtype, mean, std, **options)


@register("wrn70_16", options=_OPTIONS)
def wrn70_16(num_classes: int, width: float, dtype: Dtype,
             mean: tuple[float, ...], std: tuple[float, ...],
             **options) -> WideResNet:
  """WRN-70-16: 11 blocks per stage, 256/512/1024 channels; 266.8M
  parameters (Gowal et al. 2020/2021's large robust model; too big to
  replicate comfortably on one accelerator: the ``fsdp`` sharding target)."""
  return WideResNet(70, 16, num_classes, width, dtype, mean, std, **options)
