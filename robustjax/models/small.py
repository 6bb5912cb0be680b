"""A small CNN for quick CPU runs and tests.

conv32-conv32-pool-conv64-conv64-pool, each conv followed by BatchNorm and
ReLU (so the model has batch_stats, like the big ones), then a 4x4 adaptive
average pool, a 256-unit hidden layer and the head. About 0.33M parameters at
width 1 and 10 classes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.models.layers import (Dtype, Head, adaptive_avg_pool,
                                     batch_norm, conv, normalize,
                                     scale_channels)
from robustjax.models.registry import register

CONV_CHANNELS = (32, 32, 64, 64)
HIDDEN_UNITS = 256
# Spatial grid kept before flattening. Pooling to a fixed grid (rather than
# flattening whatever is left) keeps fc1's size independent of the input
# size, so 32x32 and 64x64 inputs both work; 4x4 keeps some spatial layout,
# which a global pool would discard.
POOLED_SIZE = 4


class SmallCNN(nn.Module):
  """Four conv-BN-ReLU layers, two max-pools, two dense layers.

  Parameter paths: ``conv{1-4}``, ``bn{1-4}``, ``fc1``, ``head/dense``.
  x [B, H, W, 3] in [0, 1] (H, W divisible by 16) -> float32 logits
  [B, num_classes].
  """

  num_classes: int = 10
  width: float = 1.0
  dtype: Dtype = jnp.float32
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = normalize(x, self.mean, self.std, self.dtype)
    for i, channels in enumerate(CONV_CHANNELS, start=1):
      x = conv(scale_channels(channels, self.width), 3, dtype=self.dtype,
               name=f"conv{i}")(x)
      x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn{i}")(x))
      if i % 2 == 0:  # a max-pool after each pair of convs
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = adaptive_avg_pool(x, POOLED_SIZE)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(scale_channels(HIDDEN_UNITS, self.width), dtype=self.dtype,
                 param_dtype=jnp.float32, name="fc1")(x)
    x = nn.relu(x)
    return Head(self.num_classes, dtype=self.dtype, name="head")(x)


@register("small_cnn")
def small_cnn(num_classes: int, width: float, dtype: Dtype,
              mean: tuple[float, ...], std: tuple[float, ...]) -> SmallCNN:
  """The small CNN; cheap enough to train for a few steps in a CPU test."""
  return SmallCNN(num_classes, width, dtype, mean, std)
