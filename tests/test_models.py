"""Tests for robustjax.models: shapes, parameter counts, names, BN behaviour.

Full-width models are only traced (``jax.eval_shape``), never run; real
forward passes use width 0.125 and batch 2 so the file stays fast on CPU.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from robustjax import models
from robustjax.errors import ConfigError
from robustjax.models import layers

ALL_MODELS = ("preact_resnet18", "resnet18", "resnet34", "small_cnn", "vgg16",
              "vgg16_rws", "vit_b", "wrn", "wrn28_10", "wrn34_10",
              "wrn70_16")
BN_FREE_MODELS = ("vgg16", "vgg16_rws", "vit_b")
SMALL_WIDTH = 0.125
# flax's automatic submodule names look like Conv_0, BatchNorm_3, block_1.
AUTO_NAME = re.compile(r"_[0-9]+$")

# Trainable parameter counts at width 1 and 10 classes (BN scale and bias
# included, running statistics not).
#  - resnet18, resnet34, wrn28_10, wrn34_10: the standard PyTorch numbers
#    (kuangliu/pytorch-cifar; TRADES/MART WideResNet without its unused
#    ``sub_block1``).
#  - preact_resnet18: 11,171,146 (kuangliu's PreActResNet18, which has no
#    final BN) + 1,024 for the final BN-ReLU of Wong et al. / Rice et al.
#    (scale and bias over 512 channels) = 11,172,170.
#  - vgg16: 14,728,266 is kuangliu's VGG16 *with* BatchNorm; without BN it is
#    14,728,266 - 8,448 (scale and bias of 13 BNs over 4,224 channels)
#    = 14,719,818 (14,714,688 in the convs + 5,130 in the head).
EXPECTED_PARAM_COUNTS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "preact_resnet18": 11_171_146 + 2 * 512,
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
    "wrn": 36_479_194,  # default depth 28, widen 10
    "vgg16": 14_728_266 - 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512),
    # The RWS VGG-16 differs from vgg16 only in a max-pool (no parameters).
    "vgg16_rws": 14_728_266 - 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512),
    "small_cnn": 330_730,
    # WRN-70-16 as in Gowal et al. (~267M); ViT-B/4 with 10 classes: see
    # test_vit_b_param_count for the sum.
    "wrn70_16": 266_796_506,
    "vit_b": 85_152_010,
}


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))


def _real_init(model: nn.Module, x: jax.Array):
  """``model.init`` for real, compiled.

  The "rbg" PRNG compiles several times faster than the default threefry,
  and key generation speed is all init spends time on at this size.
  """
  key = jax.random.key(0, impl="rbg")
  return jax.jit(lambda k, x: model.init(k, x, train=False))(key, x)


def _abstract_init(model: nn.Module, size: int = 32, batch: int = 2):
  """Variable shapes of ``model`` without allocating or computing anything."""
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda k, x: model.init(k, x, train=False),
                        jax.random.key(0), x)


def _abstract_logits(model: nn.Module, size: int = 32, batch: int = 2):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

  def forward(k, x):
    return model.apply(model.init(k, x, train=False), x, train=False)

  return jax.eval_shape(forward, jax.random.key(0), x)


def _paths(tree) -> list[str]:
  return list(traverse_util.flatten_dict(tree, sep="/"))


def _num_params(variables) -> int:
  return sum(int(np.prod(leaf.shape))
             for leaf in jax.tree.leaves(variables["params"]))


# --- registry ---------------------------------------------------------------


def test_available_models_sorted_and_complete():
  assert models.available_models() == sorted(ALL_MODELS)


def test_unknown_model_names_the_choices():
  with pytest.raises(ConfigError) as info:
    models.create_model("resnet19")
  message = str(info.value)
  assert "'resnet19'" in message and "\n" not in message
  assert ", ".join(sorted(ALL_MODELS)) in message


@pytest.mark.parametrize("kwargs", [
    {"width": 0}, {"width": -0.5}, {"width": float("nan")},
    {"num_classes": 1}, {"num_classes": 0}, {"num_classes": 2.5},
    {"mean": (0.5, 0.5)}, {"std": (0.2, 0.0, 0.2)},
])
def test_bad_arguments_raise_config_error(kwargs):
  with pytest.raises(ConfigError):
    models.create_model("small_cnn", **kwargs)


def test_cifar10_stats():
  assert models.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
  assert models.CIFAR10_STD == (0.2471, 0.2435, 0.2616)


# --- shapes and counts (traced only) ----------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAM_COUNTS))
def test_full_width_param_count(name):
  variables = _abstract_init(models.create_model(name))
  assert _num_params(variables) == EXPECTED_PARAM_COUNTS[name]
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_full_width_logits_shape(name, num_classes):
  model = models.create_model(name, num_classes=num_classes)
  logits = _abstract_logits(model, size=32, batch=3)
  assert logits.shape == (3, num_classes)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_64px_inputs(name, num_classes):
  model = models.create_model(name, num_classes=num_classes, width=SMALL_WIDTH)
  logits = _abstract_logits(model, size=64)
  assert logits.shape == (2, num_classes)


@pytest.mark.parametrize("name", ["resnet18", "wrn28_10", "vgg16",
                                  "vgg16_rws"])
def test_head_width_independent_of_input_size(name):
  """Global average pooling: the same parameters serve 32x32 and 64x64."""
  model = models.create_model(name)
  shapes32 = jax.tree.map(lambda a: a.shape, _abstract_init(model, size=32))
  shapes64 = jax.tree.map(lambda a: a.shape, _abstract_init(model, size=64))
  assert shapes32 == shapes64


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create_model("wrn28_10", dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree.leaves(_abstract_init(model)))
  assert _abstract_logits(model).dtype == jnp.float32


def test_width_scales_every_layer():
  params = _abstract_init(models.create_model("resnet18", width=0.25))["params"]
  assert params["stem"]["conv"]["kernel"].shape == (3, 3, 3, 16)
  assert params["stage2"]["block0"]["conv1"]["kernel"].shape == (3, 3, 16, 32)
  assert params["stage4"]["block1"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert params["head"]["dense"]["kernel"].shape == (128, 10)
  wrn = _abstract_init(models.create_model("wrn34_10", width=0.125))["params"]
  assert wrn["stem"]["conv"]["kernel"].shape == (3, 3, 3, 2)
  assert wrn["stage1"]["block0"]["conv1"]["kernel"].shape == (3, 3, 2, 20)
  assert wrn["head"]["dense"]["kernel"].shape == (80, 10)


# --- parameter names ---------------------------------------------------------

EXPECTED_PATHS = {
    "resnet18": ["stem/conv/kernel", "stem/bn/scale", "stem/bn/bias",
                 "stage1/block0/conv1/kernel", "stage1/block0/bn1/scale",
                 "stage1/block1/conv2/kernel", "stage1/block0/bn2/bias",
                 "stage2/block0/shortcut/conv/kernel",
                 "stage2/block0/shortcut/bn/scale",
                 "stage4/block1/bn2/scale", "head/dense/kernel",
                 "head/dense/bias"],
    "resnet34": ["stage3/block5/conv2/kernel", "stage4/block2/bn1/scale",
                 "stage4/block0/shortcut/bn/bias"],
    "preact_resnet18": ["stem/conv/kernel", "stage1/block0/bn1/scale",
                        "stage2/block0/shortcut/conv/kernel",
                        "final_bn/scale", "head/dense/kernel"],
    "wrn34_10": ["stem/conv/kernel", "stage1/block0/bn1/scale",
                 "stage1/block0/shortcut/conv/kernel",
                 "stage3/block4/conv2/kernel", "final_bn/bias",
                 "head/dense/kernel"],
    "wrn28_10": ["stage3/block3/conv2/kernel", "final_bn/scale"],
    "wrn": ["stage3/block3/conv2/kernel", "final_bn/scale"],
    "vgg16": ["features/conv0/kernel", "features/conv0/bias",
              "features/conv12/kernel", "head/dense/kernel"],
    "vgg16_rws": ["features/conv0/kernel", "features/conv0/bias",
                  "features/conv12/kernel", "head/dense/kernel"],
    "small_cnn": ["conv1/kernel", "bn1/scale", "conv4/kernel", "bn4/bias",
                  "fc1/kernel", "head/dense/kernel"],
    "wrn70_16": ["stage1/block0/shortcut/conv/kernel",
                 "stage3/block10/conv2/kernel", "final_bn/scale"],
    "vit_b": ["embed/patch/kernel", "embed/cls", "embed/pos",
              "encoder/layer0/ln1/scale", "encoder/layer0/attn/query/kernel",
              "encoder/layer11/attn/out/kernel", "encoder/layer5/mlp/fc1/bias",
              "encoder/layer11/mlp/fc2/kernel", "encoder/ln/scale",
              "head/dense/kernel"],
}
UNEXPECTED_PATHS = {
    # No shortcut where the shape is unchanged; pre-activation shortcuts and
    # stems have no BN; VGG convs are the only layers with a conv bias.
    "resnet18": ["stage1/block0/shortcut/conv/kernel", "stem/conv/bias"],
    "preact_resnet18": ["stage2/block0/shortcut/bn/scale", "stem/bn/scale"],
    "wrn34_10": ["stage1/block1/shortcut/conv/kernel",
                 "stage2/block0/shortcut/bn/scale"],
    "small_cnn": ["conv1/bias"],
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_readable_parameter_paths(name):
  variables = _abstract_init(models.create_model(name, width=SMALL_WIDTH))
  paths = set(_paths(variables["params"]))
  for path in EXPECTED_PATHS[name]:
    assert path in paths, f"{name}: missing {path}"
  for path in UNEXPECTED_PATHS.get(name, []):
    assert path not in paths, f"{name}: unexpected {path}"
  for collection in variables.values():
    for path in _paths(collection):
      for part in path.split("/"):
        assert not AUTO_NAME.search(part), f"{name}: auto name in {path}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_collections(name):
  variables = _abstract_init(models.create_model(name, width=SMALL_WIDTH))
  if name in BN_FREE_MODELS:
    assert set(variables) == {"params"}
  else:
    assert set(variables) == {"params", "batch_stats"}
    # Running statistics mirror the BN layers' parameter paths.
    stats = {p.rsplit("/", 1)[0] for p in _paths(variables["batch_stats"])}
    bn = {p.rsplit("/", 1)[0] for p in _paths(variables["params"])
          if p.endswith("/scale")}
    assert stats == bn


# --- real forward passes (small width, batch 2) ------------------------------


# resnet34 and wrn34_10 reuse resnet18's and wrn28_10's code with more blocks;
# their shapes are covered above, so they are not compiled here to save time.
@pytest.mark.parametrize("name", ["preact_resnet18", "resnet18", "small_cnn",
                                  "vgg16", "wrn28_10"])
def test_forward_train_and_eval(name):
  model = models.create_model(name, width=SMALL_WIDTH)
  x = _images()

  variables = _real_init(model, x)

  @jax.jit
  def run(variables, x):
    logits = model.apply(variables, x, train=False)
    train_logits, train_updates = model.apply(variables, x, train=True,
                                              mutable=["batch_stats"])
    eval_logits, eval_updates = model.apply(variables, x, train=False,
                                            mutable=["batch_stats"])
    return logits, train_logits, train_updates, eval_logits, eval_updates

  logits, train_logits, train_updates, eval_logits, eval_updates = run(
      variables, x)
  for out in (logits, train_logits, eval_logits):
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(logits, eval_logits)

  if name in BN_FREE_MODELS:
    # Callers can use the BN signature unchanged: the updates are empty.
    assert "batch_stats" not in variables
    assert not train_updates and not eval_updates
    np.testing.assert_allclose(train_logits, logits, rtol=1e-6, atol=1e-6)
    return
  stats = variables["batch_stats"]
  # Evaluation leaves the running statistics untouched.
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"],
               stats)
  # Training moves every running mean and variance.
  assert (jax.tree.structure(train_updates["batch_stats"])
          == jax.tree.structure(stats))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         train_updates["batch_stats"], stats)
  assert all(jax.tree.leaves(changed))
  # Batch statistics differ from the fresh running ones (mean 0, var 1).
  assert not np.allclose(train_logits, logits)


def test_normalisation_inside_the_model():
  """mean/std are constants: absent from params, yet they change the output."""
  x = _images()
  base = models.create_model("small_cnn", width=SMALL_WIDTH)
  shifted = models.create_model("small_cnn", width=SMALL_WIDTH,
                                mean=(0.0, 0.0, 0.0))
  variables = _real_init(base, x)
  for path in _paths(variables["params"]):
    assert "mean" not in path and "std" not in path
  shifted_vars = _abstract_init(shifted)
  assert (jax.tree.map(lambda a: a.shape, variables)
          == jax.tree.map(lambda a: a.shape, shifted_vars))

  apply = jax.jit(lambda m, v, x: m.apply(v, x, train=False),
                  static_argnums=0)
  out_base = apply(base, variables, x)
  out_shifted = apply(shifted, variables, x)
  assert not np.allclose(out_base, out_shifted)
  # And the normalisation is exactly (x - mean) / std before the first layer:
  # an identity-stats model fed normalised pixels gives the same logits.
  identity = models.create_model("small_cnn", width=SMALL_WIDTH,
                                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  x_norm = ((x - jnp.asarray(models.CIFAR10_MEAN))
            / jnp.asarray(models.CIFAR10_STD))
  np.testing.assert_allclose(apply(identity, variables, x_norm), out_base,
                             rtol=1e-4, atol=1e-5)


# --- layer conventions --------------------------------------------------------


def test_batch_norm_matches_pytorch_defaults():
  """The running mean moves 10% of the way to the batch mean (torch's 0.1)."""
  bn = layers.batch_norm(True, dtype=jnp.float32, name="bn")
  x = jnp.full((4, 2, 2, 3), 5.0)
  variables = bn.init(jax.random.key(0), x)
  _, updates = bn.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.5, rtol=1e-6)
  assert bn.epsilon == 1e-5


def test_strided_conv_pads_like_pytorch():
  """3x3 stride-2 conv pads 1 on both sides (flax "SAME" would pad (0, 1))."""

  class OneConv(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.conv(1, 3, strides=2, dtype=jnp.float32, name="conv")(x)

  x = jnp.ones((1, 4, 4, 1))
  ones = {"params": {"conv": {"kernel": jnp.ones((3, 3, 1, 1))}}}
  out = OneConv().apply(ones, x)[0, :, :, 0]
  # Top-left window overlaps the padding on two sides: 2x2 inputs inside.
  np.testing.assert_array_equal(out, [[4.0, 6.0], [6.0, 9.0]])


def test_conv_init_is_kaiming_normal_fan_out():
  init = layers.conv_kernel_init
  kernel = init(jax.random.key(0, impl="rbg"), (3, 3, 64, 128), jnp.float32)
  expected_std = np.sqrt(2.0 / (3 * 3 * 128))
  assert abs(float(jnp.std(kernel)) / expected_std - 1.0) < 0.03
  # Untruncated (as torch.nn.init.kaiming_normal_): some values beyond 2 std.
  assert float(jnp.max(jnp.abs(kernel))) > 2.5 * expected_std


# --- large models: WRN-70-16 and ViT-B (traced only) -------------------------


# --- VGG-16 of the RWS code against a PyTorch twin --------------------------


def _torch_rws_vgg16(num_classes, mean, std):
  """The VGG-16 of VITA-Group/Robust_Weight_Signatures (models/vgg.py),
  written out in PyTorch: config D, 13 convs with bias + ReLU and a max-pool
  after the first four groups only, AdaptiveAvgPool2d(1), Linear(512, C),
  the input normalisation inside. NCHW."""
  import torch
  from torch import nn as tnn

  config = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
            "M", 512, 512, 512]
  layers, channels = [], 3
  for v in config:
    if v == "M":
      layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [tnn.Conv2d(channels, v, kernel_size=3, padding=1),
                 tnn.ReLU()]
      channels = v

  class Twin(tnn.Module):
    def __init__(self):
      super().__init__()
      self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
      self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
      self.features = tnn.Sequential(*layers)
      self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
      self.classifier = tnn.Linear(512, num_classes)

    def forward(self, x):
      x = self.features((x - self.mean) / self.std)
      return self.classifier(torch.flatten(self.avgpool(x), 1))

  return Twin()


def _load_into_twin(twin, params):
  """Copies flax VGG params into the twin: conv kernels HWIO -> OIHW,
  dense kernels [in, out] -> [out, in]."""
  import torch
  convs = [m for m in twin.features if isinstance(m, torch.nn.Conv2d)]
  assert len(convs) == 13
  with torch.no_grad():
    for i, m in enumerate(convs):
      p = params["features"][f"conv{i}"]
      m.weight.copy_(torch.from_numpy(
          np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()))
      m.bias.copy_(torch.from_numpy(np.asarray(p["bias"])))
    twin.classifier.weight.copy_(torch.from_numpy(
        np.asarray(params["head"]["dense"]["kernel"]).T.copy()))
    twin.classifier.bias.copy_(torch.from_numpy(
        np.asarray(params["head"]["dense"]["bias"])))


@pytest.mark.parametrize("size", [32, 64])
def test_vgg16_rws_equals_the_reference_network(size):
  """vgg16_rws at width 1 computes the RWS code's VGG-16 (a PyTorch twin
  with the same weights); vgg16, with its fifth max-pool, does not."""
  import torch
  torch.set_num_threads(1)
  rng = np.random.default_rng(0)
  model = models.create_model("vgg16_rws", num_classes=10)
  variables = jax.tree.map(np.asarray, _real_init(model, _images()))
  # Non-zero biases, so a bias copied to the wrong place shows.
  params = jax.tree.map(
      lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(x.dtype)
      if x.ndim == 1 else x, variables["params"])
  twin = _torch_rws_vgg16(10, models.CIFAR10_MEAN, models.CIFAR10_STD)
  _load_into_twin(twin, params)
  x = np.asarray(_images(batch=3, size=size, seed=1))
  with torch.no_grad():
    want = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = np.asarray(jax.jit(model.apply)({"params": params}, x))
  scale = float(np.abs(want).max())
  assert scale > 1e-3  # a non-trivial function of the input
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
  # The five-pool vgg16 holds the same parameters but another function.
  other = np.asarray(jax.jit(models.create_model("vgg16", num_classes=10)
                             .apply)({"params": params}, x))
  assert np.abs(other - want).max() > 100 * 1e-4 * scale


def test_vit_b_param_count():
  """ViT-B/4 at width 1, 10 classes, summed by hand: patch embedding
  4*4*3*768 + 768, class token 768, position embedding 65*768; per layer two
  LayerNorms (4*768), q/k/v/out (4*(768*768 + 768)), MLP (768*3072 + 3072 +
  3072*768 + 768); final LayerNorm 2*768; head 768*10 + 10."""
  d, mlp, layers_ = 768, 3072, 12
  per_layer = 4 * d + 4 * (d * d + d) + (d * mlp + mlp + mlp * d + d)
  expected = (4 * 4 * 3 * d + d) + d + 65 * d + layers_ * per_layer \
      + 2 * d + (d * 10 + 10)
  assert expected == EXPECTED_PARAM_COUNTS["vit_b"]
  params = _abstract_init(models.create_model("vit_b"))["params"]
  assert params["encoder"]["layer0"]["attn"]["query"]["kernel"].shape == (
      768, 12, 64)
  assert params["encoder"]["layer0"]["mlp"]["fc1"]["kernel"].shape == (
      768, 3072)
  assert params["embed"]["pos"].shape == (1, 65, 768)


@pytest.mark.parametrize("width, hidden, heads", [
    (0.5, 384, 6), (0.25, 192, 3), (0.0625, 48, 1)])
def test_vit_width_scales_hidden_and_heads(width, hidden, heads):
  """ViT-S at width 0.5, ViT-Ti at 0.25: heads of 64 dimensions."""
  params = _abstract_init(models.create_model("vit_b", width=width))["params"]
  assert params["encoder"]["layer3"]["attn"]["key"]["kernel"].shape == (
      hidden, heads, hidden // heads)
  assert params["encoder"]["layer3"]["mlp"]["fc2"]["kernel"].shape == (
      4 * hidden, hidden)
  assert params["head"]["dense"]["kernel"].shape == (hidden, 10)


def test_wrn70_16_shapes():
  params = _abstract_init(models.create_model("wrn70_16"))["params"]
  assert set(params["stage2"]) == {f"block{j}" for j in range(11)}
  assert params["stage3"]["block10"]["conv2"]["kernel"].shape == (
      3, 3, 1024, 1024)
  assert params["head"]["dense"]["kernel"].shape == (1024, 10)


def test_vit_forward_same_weights_at_32_and_64_pixels():
  """A real forward of a 2-layer width-1/16 ViT (vit_b's code, fewer layers
  to compile): finite float32 logits; 64x64 inputs reuse the 32x32 weights
  (the position embedding is resized); train=True changes nothing (no
  dropout, no BatchNorm)."""
  from robustjax.models import vit
  model = vit.ViT(num_classes=10, width=0.0625, depth=2,
                  mean=models.CIFAR10_MEAN, std=models.CIFAR10_STD)
  variables = _real_init(model, _images())

  @jax.jit
  def run(variables, x32, x64):
    return (model.apply(variables, x32, train=False),
            model.apply(variables, x32, train=True),
            model.apply(variables, x64, train=False))

  logits, train_logits, logits64 = run(variables, _images(),
                                       _images(size=64, seed=1))
  assert logits.shape == logits64.shape == (2, 10)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits64)))
  np.testing.assert_array_equal(logits, train_logits)


# --- model options and saved specs -------------------------------------------


# Reference logits of specs holding only name, width and num_classes:
# (first three logits of image 0, sum of |logits|) for init key 0 and
# uniform images from numpy's default_rng(0). A change to the network such
# a spec builds (a default, a padding, an initialiser) changes them.
SAVED_SPEC_LOGITS = {
    ("resnet18", 0.25): ([-1.6891318559646606, 1.2606401443481445,
                          -1.756831407546997], 19.265247344970703),
    ("preact_resnet18", 0.25): ([-1.2772823572158813, 0.6925251483917236,
                                 -1.5160834789276123], 11.582215309143066),
    ("wrn34_10", 0.1): ([-10.826902389526367, -2.3016698360443115,
                         -5.215600967407227], 114.20652770996094),
    ("wrn28_10", 0.1): ([-2.8383474349975586, -0.3364226818084717,
                         0.33666670322418213], 41.61732864379883),
    ("small_cnn", 0.25): ([1.2213177680969238, 0.1491696834564209,
                          -0.07036104053258896], 9.794039726257324),
}


@pytest.mark.parametrize("name,width", sorted(SAVED_SPEC_LOGITS))
def test_specs_saved_without_options_build_the_same_network(name, width):
  old = {"name": name, "width": width, "num_classes": 10}
  full = models.full_spec(old)
  assert full == models.model_spec(name, width, 10)
  assert full["mean"] == list(models.CIFAR10_MEAN)
  assert full["std"] == list(models.CIFAR10_STD)
  model = models.build_model(old)
  x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(
      np.float32)
  variables = jax.jit(lambda: model.init(jax.random.key(0), x,
                                         train=False))()
  logits = np.asarray(jax.jit(lambda v: model.apply(v, x, train=False))(
      variables))
  first, total = SAVED_SPEC_LOGITS[(name, width)]
  np.testing.assert_allclose(logits[0, :3], first, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.abs(logits).sum(), total, rtol=1e-5)


def test_model_options_are_checked_and_recorded():
  spec = models.model_spec("wrn", 1.0, 10, depth=34, widen=20,
                           activation="swish", padding="same",
                           mean=(0, 0, 0), std=(1, 1, 1))
  assert spec == {"name": "wrn", "width": 1.0, "num_classes": 10,
                  "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                  "depth": 34, "widen": 20, "activation": "silu",
                  "padding": "same"}
  assert models.full_spec(spec) == spec
  # WRN-34-20: explicit widen keeps the 16-channel stem, unlike width=2.
  params = _abstract_init(models.build_model(spec))["params"]
  assert params["stem"]["conv"]["kernel"].shape == (3, 3, 3, 16)
  assert params["stage3"]["block0"]["conv1"]["kernel"].shape == (
      3, 3, 640, 1280)
  for bad in (dict(depth=30), dict(widen=0), dict(activation="gelu"),
              dict(padding="valid"), dict(shortcut="raw")):
    with pytest.raises(ConfigError) as err:
      models.create_model("wrn", **bad)
    assert "\n" not in str(err.value)
  with pytest.raises(ConfigError, match="has no option padding"):
    models.create_model("resnet18", padding="same")
  with pytest.raises(ConfigError, match="final_bn"):
    models.create_model("preact_resnet18", final_bn="yes")


def test_same_padding_differs_from_torch_padding_when_strided():
  """SAME pads a strided 3x3 conv (0, 1); PyTorch's rule pads (1, 1)."""
  x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)

  class One(nn.Module):
    padding: str

    @nn.compact
    def __call__(self, x):
      return layers.conv(1, 3, strides=2, padding=self.padding,
                         dtype=jnp.float32, name="c")(x)

  kernel = {"params": {"c": {"kernel": jnp.ones((3, 3, 1, 1))}}}
  same = One("same").apply(kernel, x)
  torch_rule = One("torch").apply(kernel, x)
  # Output i reads rows 2i .. 2i + 2 under SAME and 2i - 1 .. 2i + 1 under
  # PyTorch's rule: output (1, 1) sums x[2:5, 2:5] and x[1:4, 1:4].
  assert float(same[0, 1, 1, 0]) == float(x[0, 2:5, 2:5, 0].sum())
  assert float(torch_rule[0, 1, 1, 0]) == float(x[0, 1:4, 1:4, 0].sum())


def test_resuming_a_run_saved_without_options_is_the_same_model():
  from robustjax.training import loop
  old = {"name": "small_cnn", "width": 0.25, "num_classes": 10}
  loop._check_same_model({"model": old}, models.model_spec(
      "small_cnn", 0.25, 10), "workdir")
  with pytest.raises(ConfigError):
    loop._check_same_model({"model": old}, models.model_spec(
        "small_cnn", 0.5, 10), "workdir")
