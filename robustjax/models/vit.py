"""Vision Transformer (Dosovitskiy et al. 2021) for CIFAR-sized inputs.

``vit_b``: ViT-Base (12 pre-LN encoder layers, hidden 768, 12 heads, MLP
3072, GELU) with 4x4 patches, so a 32x32 image becomes an 8x8 grid of 64
tokens plus a learned class token; the classifier reads the class token after
a final LayerNorm. ``width`` scales the hidden size (MLP = 4 x hidden) and the
heads keep ViT's 64 dimensions each: width 0.5 is ViT-S (384, 6 heads), 0.25
ViT-Ti (192, 3 heads); the depth stays 12. No dropout, no BatchNorm (so no
``batch_stats`` collection).

Parameter paths: ``embed/patch/{kernel,bias}``, ``embed/cls``, ``embed/pos``,
``encoder/layer{i}/{ln1,ln2}/{scale,bias}``,
``encoder/layer{i}/attn/{query,key,value,out}/{kernel,bias}``,
``encoder/layer{i}/mlp/{fc1,fc2}/{kernel,bias}``, ``encoder/ln/{scale,bias}``,
``head/dense/{kernel,bias}``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.models.layers import Dtype, Head, normalize, scale_channels
from robustjax.models.registry import register

PATCH = 4
BASE_IMAGE = 32     # the position embedding's grid is BASE_IMAGE / PATCH
HEAD_DIM = 64
BASE_HIDDEN = 768
MLP_RATIO = 4
DEPTH = 12


def vit_dims(width: float) -> tuple[int, int]:
  """``(hidden, heads)`` for ``width``: heads of about 64 dimensions, and a
  hidden size that is a multiple of the head count (768/12 at width 1)."""
  hidden = scale_channels(BASE_HIDDEN, width)
  heads = max(1, hidden // HEAD_DIM)
  return heads * (hidden // heads), heads


class PatchEmbed(nn.Module):
  """Patches + class token + position embedding.

  x [B, H, W, 3] -> tokens [B, 1 + (H / PATCH) * (W / PATCH), hidden]. The
  position embedding is learned for the 32x32 grid (8x8) and resized
  bilinearly for other input sizes, so one set of weights serves 32x32 and
  64x64 inputs (as the CNNs' global pooling does).
  """

  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.hidden, (PATCH, PATCH), strides=(PATCH, PATCH),
                padding="VALID", dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=nn.initializers.lecun_normal(), name="patch")(x)
    b, gh, gw, c = x.shape
    grid = BASE_IMAGE // PATCH
    init = nn.initializers.normal(0.02)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
    pos = self.param("pos", init, (1, 1 + grid * grid, c), jnp.float32)
    pos_cls, pos_grid = pos[:, :1], pos[:, 1:].reshape(1, grid, grid, c)
    if (gh, gw) != (grid, grid):
      pos_grid = jax.image.resize(pos_grid, (1, gh, gw, c), "bilinear")
    tokens = x.reshape(b, gh * gw, c) + pos_grid.reshape(
        1, gh * gw, c).astype(self.dtype)
    cls_token = jnp.broadcast_to((cls + pos_cls).astype(self.dtype), (b, 1, c))
    return jnp.concatenate([cls_token, tokens], axis=1)


class EncoderLayer(nn.Module):
  """Pre-LN transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x)).

  [B, T, hidden] -> [B, T, hidden].
  """

  hidden: int
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,  # noqa: E731
                                   param_dtype=jnp.float32, name=name)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.xavier_uniform(), deterministic=True,
        name="attn")(ln("ln1")(x))
    x = x + y
    y = Mlp(self.hidden * MLP_RATIO, self.hidden, dtype=self.dtype,
            name="mlp")(ln("ln2")(x))
    return x + y


class Mlp(nn.Module):
  """Dense(mlp) - GELU - Dense(hidden): [B, T, hidden] -> [B, T, hidden]."""

  mlp: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(1e-6), name=name)
    return dense(self.hidden, "fc2")(nn.gelu(dense(self.mlp, "fc1")(x)))


class Encoder(nn.Module):
  """``depth`` layers named ``layer0`` ... then a final LayerNorm ``ln``."""

  depth: int
  hidden: int
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      x = EncoderLayer(self.hidden, self.heads, self.dtype,
                       name=f"layer{i}")(x)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,
                        param_dtype=jnp.float32, name="ln")(x)


class ViT(nn.Module):
  """x [B, H, W, 3] in [0, 1] (H, W multiples of 4) -> float32 logits
  [B, num_classes]. ``train`` is accepted for the shared model signature and
  changes nothing (no dropout, no BatchNorm)."""

  num_classes: int = 10
  width: float = 1.0
  depth: int = DEPTH
  dtype: Dtype = jnp.float32
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    hidden, heads = vit_dims(self.width)
    x = normalize(x, self.mean, self.std, self.dtype)
    x = PatchEmbed(hidden, self.dtype, name="embed")(x)
    x = Encoder(self.depth, hidden, heads, self.dtype, name="encoder")(x)
    return Head(self.num_classes, dtype=self.dtype, name="head")(x[:, 0])


@register("vit_b")
def vit_b(num_classes: int, width: float, dtype: Dtype,
          mean: tuple[float, ...], std: tuple[float, ...]) -> ViT:
  """ViT-B/4 for 32x32 inputs: 85.14M parameters with 10 classes."""
  return ViT(num_classes, width, DEPTH, dtype, mean, std)
