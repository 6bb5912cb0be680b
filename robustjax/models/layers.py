"""Building blocks shared by every model family.

Each helper does one job: input normalisation, a conv or BatchNorm with the
PyTorch-equivalent settings, channel scaling, pooling, and the dense head.
Every layer keeps its parameters in float32 (``param_dtype``) and computes in
``dtype``, so mixed precision is a matter of passing ``dtype=jnp.bfloat16``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any  # a JAX dtype such as jnp.float32 or jnp.bfloat16

# Per-channel statistics of the CIFAR-10 training set (RGB order).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2471, 0.2435, 0.2616)

# torchvision initialises convs with kaiming_normal_(mode="fan_out",
# nonlinearity="relu"): an untruncated normal with variance 2 / fan_out, where
# fan_out = kh * kw * out_channels. ("normal" in JAX is the untruncated one.)
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def scale_channels(channels: int, width: float) -> int:
  """``channels * width`` rounded to the nearest integer, at least 1."""
  return max(1, int(round(channels * width)))


def normalize(x: jax.Array, mean: tuple[float, ...], std: tuple[float, ...],
              dtype: Dtype) -> jax.Array:
  """``(x - mean) / std`` per channel; [B, H, W, C] in [0, 1] -> same shape.

  mean and std are Python constants baked into the graph, never parameters,
  so an optimizer cannot move them and checkpoints do not carry them. The
  arithmetic is done in float32 before casting to the compute dtype.
  """
  mean_arr = jnp.asarray(mean, jnp.float32)
  std_arr = jnp.asarray(std, jnp.float32)
  return ((x.astype(jnp.float32) - mean_arr) / std_arr).astype(dtype)


# The padding rules a conv may follow (the ``padding`` model option).
PADDINGS = ("torch", "same")

# Where a pre-activation block's projection shortcut reads its input (the
# ``shortcut`` model option): "preact" a 1x1 conv of the pre-activated input
# (TRADES/MART WideResNet, DeepMind's WideResNet, PreActBlockV2); "raw" a 1x1
# conv of the raw block input (PreActBlock of Wong et al. 2020 and
# Andriushchenko & Flammarion 2020); "raw3x3" a 3x3 conv of the raw block
# input (DeepMind's pre-activation ResNet).
SHORTCUTS = ("preact", "raw", "raw3x3")

# The activations a model may use (the ``activation`` model option). Swish
# (x * sigmoid(x)) and SiLU are one function under two names.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "silu": nn.silu, "swish": nn.silu}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The elementwise activation called ``name`` (a key of ``ACTIVATIONS``)."""
  return ACTIVATIONS[name]


def conv(features: int, kernel_size: int, *, strides: int = 1,
         use_bias: bool = False, padding: str = "torch", dtype: Dtype,
         name: str) -> nn.Conv:
  """A square conv padded by the rule ``padding``.

  ``"torch"``: PyTorch's symmetric ``kernel_size // 2`` on each side.
  ``"same"``: TensorFlow's/flax's SAME, which pads (0, 1) for a 3x3 stride-2
  conv on an even input where PyTorch pads (1, 1); DeepMind's robust models
  were trained with it (their PyTorch ports pad by hand to match). The two
  rules agree for stride 1 but sample different pixels when strided, so
  weights give the same outputs only under the rule they were trained with.
  Must be called inside a compact method (the new module binds to the
  calling module).
  """
  if padding == "same":
    pads: Any = "SAME"
  else:
    pad = kernel_size // 2
    pads = ((pad, pad), (pad, pad))
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides),
      padding=pads, use_bias=use_bias, dtype=dtype,
      param_dtype=jnp.float32, kernel_init=conv_kernel_init,
      bias_init=nn.initializers.zeros, name=name)


def batch_norm(train: bool, *, dtype: Dtype, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's momentum (torch 0.1 = flax 0.9) and eps 1e-5.

  In training it normalises with batch statistics and updates the running
  averages in ``batch_stats``; in evaluation it uses the running averages.
  One difference remains: flax updates the running variance with the biased
  batch variance, PyTorch with the unbiased one (a factor n / (n - 1), n =
  batch * H * W: 0.05% at batch 128 on a 4x4 map), so running statistics
  are not bit-for-bit PyTorch's.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]: the mean over the spatial axes."""
  return jnp.mean(x, axis=(1, 2))


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, S, S, C] by averaging equal non-overlapping windows.

  Like PyTorch's AdaptiveAvgPool2d for the case H and W divisible by S: a
  model can then use a flatten + dense head at any such input size.
  """
  _, h, w, _ = x.shape
  if h % output_size or w % output_size:
    raise ValueError(f"adaptive_avg_pool: spatial size {h}x{w} is not "
                     f"divisible by the output size {output_size}")
  window = (h // output_size, w // output_size)
  return nn.avg_pool(x, window, strides=window)


class Head(nn.Module):
  """The classifier: a dense layer whose logits are always float32.

  Input [B, C] (already pooled or flattened) -> logits [B, num_classes]. The
  cast keeps losses and softmax in float32 under mixed precision.
  """

  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 name="dense")(x)
    return x.astype(jnp.float32)


class Stage(nn.Module):
  """``num_blocks`` residual blocks named ``block0``, ``block1``, ...

  Only the first block may downsample (``strides``) or change the channel
  count; the rest keep the shape. ``block`` is a block class (or a
  ``functools.partial`` of one fixing its other options) with fields
  (features, strides, dtype) called as ``block(...)(x, train)``.
  [B, H, W, C_in] -> [B, H / strides, W / strides, features].
  """

  block: Callable[..., nn.Module]
  features: int
  num_blocks: int
  strides: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = self.block(features=self.features,
                     strides=self.strides if i == 0 else 1,
                     dtype=self.dtype, name=f"block{i}")(x, train)
    return x


class ConvBN(nn.Module):
  """A bias-free conv named ``conv``, optionally followed by BN named ``bn``.

  Used for stems (3x3) and projection shortcuts (1x1). No activation: callers
  decide where the ReLU goes (post-activation vs pre-activation blocks).
  [B, H, W, C_in] -> [B, H / strides, W / strides, features].
  """

  features: int
  kernel_size: int
  strides: int = 1
  use_bn: bool = True
  dtype: Dtype = jnp.float32
  padding: str = "torch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.features, self.kernel_size, strides=self.strides,
             padding=self.padding, dtype=self.dtype, name="conv")(x)
    if self.use_bn:
      x = batch_norm(train, dtype=self.dtype, name="bn")(x)
    return x
