"""The mixing network and its map from a raw score to the weight ``a(x)``.

``MixingNet`` is the reference's V4 mixing network on two levels of
intermediate features of both base models::

  feats1 = concat(std.feat1, rob.feat1)     # [B, H, W, C1]
  feats2 = concat(std.feat2, rob.feat2)     # [B, H/2, W/2, C2]
  h = layers0(feats1) + conv1x1(feats2)     # two PreAct blocks, stride 2
  h = layers1(h); h = layers2(h)            # each two blocks, stride 2
  raw = dense(global_avg_pool(h))           # [B, 1], no bias

with 512, 768 and 1024 channels in the three stages (times ``width``), so
with the reference's feature widths (768 and 1536 channels) it has the
reference's 67,848,704 parameters. Its pre-activation block adds the
activated input ``relu(bn1(x))`` on the identity shortcut, as the
reference's block does (not the raw input, as ``models.resnet``'s does).

``MixingHead`` turns ``raw`` into ``gamma`` and ``a``: in training,
``raw`` is clamped to its batch mean +- 0.6 unbiased standard deviations
(bounds held constant); then a BatchNorm without scale or bias (PyTorch
momentum 0.01, eps 1e-5), ``gamma = bn(raw) * gamma_scale + gamma_bias``,
``a = sigmoid(gamma)``, and with ``squeeze`` ``a = a * alpha_scale +
alpha_bias``, so ``a`` stays in ``[alpha_bias, alpha_bias + alpha_scale]``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.models.layers import (batch_norm, conv, global_avg_pool,
                                     scale_channels)

PLANES = (512, 768, 1024)


class MixerBlock(nn.Module):
  """The reference's pre-activation block: ``out = relu(bn1(x))``, the
  shortcut (identity, or a 1x1 strided conv) of ``out``, then
  ``conv2(relu(bn2(conv1(out)))) + shortcut``.
  [B, H, W, C_in] -> [B, H / strides, W / strides, features].
  """

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = nn.relu(batch_norm(train, dtype=jnp.float32, name="bn1")(x))
    shortcut = out
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, strides=self.strides,
                      dtype=jnp.float32, name="shortcut")(out)
    y = conv(self.features, 3, strides=self.strides, dtype=jnp.float32,
             name="conv1")(out)
    y = nn.relu(batch_norm(train, dtype=jnp.float32, name="bn2")(y))
    return conv(self.features, 3, dtype=jnp.float32, name="conv2")(y) + \
        shortcut


class MixingNet(nn.Module):
  """V4: ``(feats1 [B, H, W, C1], feats2 [B, H/2, W/2, C2]) -> raw [B, 1]``.

  Parameter paths: ``layers{0,1,2}/block{0,1}/{bn1,conv1,bn2,conv2}``,
  ``layers{k}/block0/shortcut``, ``conv1x1``, ``dense``. ``width``
  multiplies every channel count (1.0: the reference's).
  """

  width: float = 1.0

  @nn.compact
  def __call__(self, feats1: jax.Array, feats2: jax.Array,
               train: bool = False) -> jax.Array:
    planes = [scale_channels(p, self.width) for p in PLANES]

    def stage(h, features, name):
      h = MixerBlock(features, 2, name=f"{name}/block0")(h, train)
      return MixerBlock(features, 1, name=f"{name}/block1")(h, train)

    h = stage(feats1.astype(jnp.float32), planes[0], "layers0")
    h = h + conv(planes[0], 1, dtype=jnp.float32, name="conv1x1")(
        feats2.astype(jnp.float32))
    h = stage(h, planes[1], "layers1")
    h = stage(h, planes[2], "layers2")
    return nn.Dense(1, use_bias=False, name="dense")(global_avg_pool(h))


@dataclasses.dataclass(frozen=True)
class GammaConstants:
  """The fixed constants of the map ``raw -> gamma -> a``.

  ``gamma = bn(raw) * gamma_scale + gamma_bias``; with ``squeeze``, ``a =
  sigmoid(gamma) * alpha_scale + alpha_bias``. The reference trains and
  attacks during training with ``(2, 0.4)`` and no squeeze; its released
  CIFAR-10 model evaluates with ``gamma (2, 1.05)`` and ``a`` in [0.96,
  1.00] (the defaults here), its CIFAR-100 model with ``(2, 1.3)`` and
  [0.84, 0.99].
  """
  gamma_scale: float = 2.0
  gamma_bias: float = 0.4
  alpha_scale: float = 1.0
  alpha_bias: float = 0.0
  squeeze: bool = False

  @property
  def alpha_range(self) -> tuple[float, float]:
    """The range of ``a`` (``(0, 1)`` without the squeeze)."""
    if not self.squeeze:
      return (0.0, 1.0)
    return (self.alpha_bias, self.alpha_bias + self.alpha_scale)


TRAIN_CONSTANTS = GammaConstants(2.0, 0.4)
EVAL_CONSTANTS = GammaConstants(2.0, 1.05, 0.04, 0.96, squeeze=True)


class MixingHead(nn.Module):
  """``MixingNet`` plus the ``raw -> gamma -> a`` map.

  ``(feats1, feats2, train, constants) -> (gamma [B], a [B])``; in
  training mode it also updates ``batch_stats`` (the network's and the
  output BatchNorm's, ``gamma_bn``).
  """

  width: float = 1.0

  @nn.compact
  def __call__(self, feats1: jax.Array, feats2: jax.Array, train: bool,
               constants: GammaConstants) -> tuple[jax.Array, jax.Array]:
    raw = MixingNet(self.width, name="net")(feats1, feats2, train)
    if train:
      # Bounds from the batch, held constant: clamped samples get no
      # gradient through gamma (the reference's ``.item()``).
      mean = jax.lax.stop_gradient(jnp.mean(raw))
      std = jax.lax.stop_gradient(jnp.std(raw, ddof=1))
      raw = jnp.clip(raw, mean - 0.6 * std, mean + 0.6 * std)
    # PyTorch's BatchNorm1d(affine=False, momentum=0.01) is flax's 0.99.
    normed = nn.BatchNorm(use_running_average=not train, momentum=0.99,
                          epsilon=1e-5, use_scale=False, use_bias=False,
                          name="gamma_bn")(raw)
    gamma = (normed * constants.gamma_scale + constants.gamma_bias)[:, 0]
    alpha = jax.nn.sigmoid(gamma)
    if constants.squeeze:
      alpha = alpha * constants.alpha_scale + constants.alpha_bias
    return gamma, alpha
