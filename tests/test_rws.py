"""robustjax.rws: projection, quantization, the .rws file, patching, the
BatchNorm options, fine-tuning from theta_pre and the ``rws`` task."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rws as rws_config
from robustjax import checkpoint, models, rws, tasks
from robustjax.errors import ConfigError
from robustjax.rws import analysis, batchnorm, fileformat
from robustjax.weightspace import batchnorm as bn_modes
from robustjax.weightspace import trees

import tiny_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = {"name": "small_cnn", "width": 0.125, "num_classes": 10}


def _init(seed, width=SPEC["width"], name="small_cnn"):
  model = models.create_model(name, num_classes=10, width=width)
  # One compiled init (op-by-op init is many small compiles: slow on CPU).
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)),
                                   train=False))(jax.random.key(seed))
  return model, jax.tree.map(np.asarray, v)


def _moved(variables, seed, size):
  """``variables`` with every float param moved by ``size`` N(0, 1)."""
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: (x + size * rng.standard_normal(x.shape)).astype(x.dtype),
      variables["params"])
  stats = jax.tree.map(lambda x: (x + rng.uniform(size=x.shape)).astype(
      x.dtype), variables["batch_stats"])
  return {"params": params, "batch_stats": stats}


@pytest.fixture(scope="module")
def family():
  """theta_pre, a clean model and two robust models of one small_cnn."""
  model, pre = _init(0)
  return model, {"pre": pre, "clean": _moved(pre, 1, 0.02),
                 "brightness": _moved(pre, 2, 0.02),
                 "contrast": _moved(pre, 3, 0.02)}


def _sig(family, name="brightness", bits=None, first_k=4):
  _, f = family
  return rws.extract(f["pre"]["params"], f["clean"]["params"],
                     f[name]["params"], first_k=first_k, bits=bits,
                     meta={"corruption": name})


# ---------------------------------------------------------- projection

def test_projection_is_orthogonal_and_idempotent(family):
  rng = np.random.default_rng(0)
  d = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
  s = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
  v = rws.project_out(d, s)
  assert abs(np.vdot(v.astype(np.float64), s)) < 1e-5 * np.linalg.norm(
      d) * np.linalg.norm(s)
  np.testing.assert_allclose(rws.project_out(v, s), v, atol=1e-6)
  # Zero direction: nothing removed.
  np.testing.assert_array_equal(rws.project_out(d, np.zeros_like(s)), d)
  # Every tensor of an extracted signature is orthogonal to its clean delta.
  _, f = family
  sig = _sig(family)
  pre, clean = trees.flatten(f["pre"]["params"]), trees.flatten(
      f["clean"]["params"])
  for path, value in sig.tensors.items():
    delta_s = np.asarray(clean[path], np.float64) - pre[path]
    cos = np.vdot(value, delta_s) / (np.linalg.norm(value) *
                                     np.linalg.norm(delta_s))
    assert abs(cos) < 1e-5, path


def test_layer_selection_by_depth_and_pattern(family):
  sig = _sig(family, first_k=2)
  assert {trees.layer_of(p) for p in sig.paths} == {"conv1", "bn1"}
  _, f = family
  by_pattern = rws.extract(f["pre"]["params"], f["clean"]["params"],
                           f["contrast"]["params"], include="conv*")
  assert {trees.layer_of(p) for p in by_pattern.paths} == {
      "conv1", "conv2", "conv3", "conv4"}
  with pytest.raises(ConfigError, match="first_k=99"):
    _sig(family, first_k=99)


# --------------------------------------------------------- quantization

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 12, 16, 32])
def test_quantization_error_within_half_a_level(bits):
  x = np.random.default_rng(bits).standard_normal(5000) * 0.01
  codes, low, step = rws.quantize(x, bits)
  assert codes.max() <= (1 << bits) - 1
  err = np.abs(rws.dequantize(codes, low, step, np.float64) - x)
  assert err.max() <= step / 2 * (1 + 1e-9) + 1e-18
  if bits >= 8:
    assert err.max() < 0.02 / (1 << bits) * 1.01 * (x.max() - x.min()) / 0.02


@pytest.mark.parametrize("bits", [33, -1, 2.5, True])
def test_bits_outside_1_to_32_are_refused(family, bits):
  with pytest.raises(ConfigError, match="from 1 to 32") as err:
    _sig(family, bits=bits)
  assert "\n" not in str(err.value)


# ------------------------------------------------------------ patching

def test_patch_then_unpatch_returns_the_original(family):
  _, f = family
  target = f["clean"]["params"]
  before = jax.tree.map(np.copy, target)
  for bits in (None, 4):
    sig = _sig(family, bits=bits)
    patched = rws.patch(target, sig, 1.3)
    moved = trees.flatten(patched)
    assert any(not np.array_equal(moved[p], trees.flatten(target)[p])
               for p in sig.paths)
    restored = trees.flatten(rws.unpatch(patched, sig, 1.3))
    for path, value in trees.flatten(target).items():
      if path not in sig.tensors:  # untouched leaves come back bit for bit
        np.testing.assert_array_equal(restored[path], value)
        continue
      # patch rounds theta + v to float32 once, unpatch once more: the
      # error is within one float32 spacing at the larger magnitude.
      bound = np.spacing(np.maximum(np.abs(value), np.abs(moved[path])))
      assert np.all(np.abs(restored[path] - value) <= bound), path
  # The input tree is never modified.
  jax.tree.map(np.testing.assert_array_equal, target, before)


def test_unquantized_round_trip_is_exact_for_representable_sums():
  params = {"conv1": {"kernel": np.full((2, 2), 0.5, np.float32)}}
  sig = rws.Signature({"conv1/kernel": np.full((2, 2), 0.25, np.float32)})
  out = rws.unpatch(rws.patch(params, sig), sig)
  np.testing.assert_array_equal(out["conv1"]["kernel"],
                                params["conv1"]["kernel"])


def test_compose_equals_patching_one_after_the_other(family):
  _, f = family
  a, b = _sig(family, "brightness"), _sig(family, "contrast", bits=6)
  target = f["clean"]["params"]
  at_once = trees.flatten(rws.patch(target, [a, b], [0.7, 1.2]))
  one_by_one = trees.flatten(rws.patch(rws.patch(target, a, 0.7), b, 1.2))
  for path in at_once:
    np.testing.assert_allclose(at_once[path], one_by_one[path], rtol=1e-6,
                               atol=1e-7)
  composed = rws.compose([a, b], [0.7, 1.2])
  np.testing.assert_allclose(
      composed[a.paths[0]],
      0.7 * a.tensors[a.paths[0]] + 1.2 * b.tensors[a.paths[0]], rtol=1e-6,
      atol=1e-8)


def test_scale_keeps_codes_and_equals_a_coefficient(family):
  _, f = family
  sig = _sig(family, bits=5)
  scaled = rws.scale(sig, -0.5)
  for path in sig.paths:
    np.testing.assert_array_equal(scaled.codes[path], sig.codes[path])
  a = trees.flatten(rws.patch(f["clean"]["params"], scaled))
  b = trees.flatten(rws.patch(f["clean"]["params"], sig, -0.5))
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-6, atol=1e-8)
  assert rws.reference_coefficients(1.0, 2) == [0.25, 0.25]


def test_signature_refuses_a_model_of_other_shapes(family):
  sig = _sig(family)
  _, wide = _init(0, width=0.25)
  before = jax.tree.map(np.copy, wide["params"])
  with pytest.raises(ConfigError, match="conv1/.* of shape .* but the model "
                     "holds") as err:
    rws.patch(wide["params"], sig)
  assert "\n" not in str(err.value)
  jax.tree.map(np.testing.assert_array_equal, wide["params"], before)
  vgg = models.create_model("vgg16", num_classes=10, width=0.0625)
  shapes = jax.eval_shape(lambda: vgg.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  vgg_params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                            shapes["params"])
  with pytest.raises(ConfigError, match="which the model lacks"):
    rws.patch(vgg_params, sig)
  with pytest.raises(ConfigError, match="2 signatures but 1 coefficients"):
    rws.patch(family[1]["clean"]["params"], [sig, sig], [1.0])


# ----------------------------------------------------------- file format

@pytest.mark.parametrize("bits", [None, 3, 8, 12])
def test_file_round_trip(family, tmp_path, bits):
  sig = _sig(family, bits=bits)
  path = rws.save(sig, str(tmp_path / "sig"))
  assert path.endswith(".rws")
  back = rws.load(path)
  assert back.bits == sig.bits and back.meta == sig.meta
  assert back.paths == sig.paths
  for p in sig.paths:
    np.testing.assert_array_equal(back.tensors[p], sig.tensors[p])
    if bits:
      np.testing.assert_array_equal(back.codes[p], sig.codes[p])
  if bits:  # packed to exactly `bits` bits per entry, plus the header
    header = os.path.getsize(path) - (sig.num_params * bits + 7 * len(
        sig.paths)) // 8
    assert header < 4096


def test_damaged_files_give_one_line_errors(family, tmp_path):
  path = rws.save(_sig(family, bits=4), str(tmp_path / "sig"))
  blob = open(path, "rb").read()
  cases = {"truncated": blob[:-10], "header": blob[:20],
           "flipped": blob[:-5] + bytes([blob[-5] ^ 0xFF]) + blob[-4:],
           "foreign": b"PK\x03\x04" + blob[4:], "empty": b""}
  messages = {"truncated": "truncated", "header": "truncated inside the "
              "header", "flipped": "checksum", "foreign": "magic",
              "empty": "magic"}
  for case, content in cases.items():
    bad = tmp_path / f"{case}.rws"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=messages[case]) as err:
      rws.load(str(bad))
    assert "\n" not in str(err.value)
  with pytest.raises(ConfigError, match="no signature file"):
    rws.load(str(tmp_path / "missing.rws"))


def test_pack_codes_round_trip():
  rng = np.random.default_rng(0)
  for bits in (1, 5, 7, 8, 13, 16, 31, 32):
    codes = rng.integers(0, 1 << bits, size=37, dtype=np.uint64)
    raw = fileformat.pack_codes(codes, bits)
    assert len(raw) == (37 * bits + 7) // 8
    np.testing.assert_array_equal(
        fileformat.unpack_codes(raw, 37, bits), codes.astype(np.uint32))


# ------------------------------------------------------------ BatchNorm

def test_batch_stats_options(family):
  model, f = family
  sig = _sig(family)
  base = f["clean"]
  kept = rws.patch_variables(base, sig)
  assert kept["batch_stats"] is base["batch_stats"]
  images = [jax.random.uniform(jax.random.key(i), (8, 32, 32, 3))
            for i in range(2)]
  stats_fn = bn_modes.flax_stats_fn(model.apply)
  redone = rws.patch_variables(base, sig, batch_stats="recompute",
                               stats_fn=stats_fn, batches=images)
  want = bn_modes.recompute_batch_stats(
      stats_fn, {"params": rws.patch(base["params"], sig),
                 "batch_stats": base["batch_stats"]}, images)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               redone["batch_stats"], want)
  robust = [f["brightness"], f["contrast"]]
  # blend=0: the robust mean of the statistics, no re-estimate mixed in.
  avg = rws.patch_variables(base, sig, batch_stats="average",
                            robust_variables=robust, stats_fn=stats_fn,
                            batches=images, blend=0.0)
  mean_scale = (f["brightness"]["params"]["bn3"]["scale"].astype(np.float64)
                + f["contrast"]["params"]["bn3"]["scale"]) / 2
  np.testing.assert_allclose(avg["params"]["bn3"]["scale"], mean_scale,
                             rtol=1e-6)
  # BN tensors in the kept layers come from the average, not the signature.
  np.testing.assert_allclose(
      avg["params"]["bn1"]["scale"],
      (f["brightness"]["params"]["bn1"]["scale"].astype(np.float64) +
       f["contrast"]["params"]["bn1"]["scale"]) / 2, rtol=1e-6)
  np.testing.assert_allclose(avg["batch_stats"]["bn2"]["mean"], (
      f["brightness"]["batch_stats"]["bn2"]["mean"].astype(np.float64) +
      f["contrast"]["batch_stats"]["bn2"]["mean"]) / 2, rtol=1e-6)
  with pytest.raises(ConfigError, match="one of keep_a, recompute, average"):
    rws.patch_variables(base, sig, batch_stats="reset")
  assert batchnorm.is_bn("bn1/scale") and not batchnorm.is_bn("conv1/kernel")


class _TinyResNet(nn.Module):
  """A ResNet in miniature with robustjax's names: ``stem/{conv,bn}``, one
  downsampling block ``block/{conv1,bn1,conv2,bn2}`` with a projection
  shortcut ``block/shortcut/{conv,bn}``, ``head/dense``. ``momentum`` is
  Flax's (the kept fraction of the running statistics)."""

  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train=False):
    def bn(name):
      return nn.BatchNorm(use_running_average=not train,
                          momentum=self.momentum, epsilon=1e-5, name=name)

    class Stem(nn.Module):
      @nn.compact
      def __call__(s, x):
        return nn.relu(bn("bn")(nn.Conv(4, (3, 3), name="conv")(x)))

    class Shortcut(nn.Module):
      @nn.compact
      def __call__(s, x):
        return bn("bn")(nn.Conv(6, (1, 1), (2, 2), use_bias=False,
                                name="conv")(x))

    class Block(nn.Module):
      @nn.compact
      def __call__(s, x):
        y = nn.relu(bn("bn1")(nn.Conv(6, (3, 3), (2, 2), use_bias=False,
                                      name="conv1")(x)))
        y = bn("bn2")(nn.Conv(6, (3, 3), use_bias=False, name="conv2")(y))
        return nn.relu(y + Shortcut(name="shortcut")(x))

    x = Block(name="block")(Stem(name="stem")(x))
    return nn.Dense(10, name="head")(jnp.mean(x, axis=(1, 2)))


def _torch_key(path):
  """A robustjax path of ``_TinyResNet`` -> the reference's (torchvision)
  state-dict key, e.g. ``block/shortcut/bn/var`` ->
  ``layer1.0.downsample.1.running_var``."""
  *layer, leaf = path.split("/")
  layer = "/".join(layer)
  layer = {"stem/conv": "conv1", "stem/bn": "bn1", "head": "fc",
           "block/shortcut/conv": "layer1.0.downsample.0",
           "block/shortcut/bn": "layer1.0.downsample.1"}.get(
               layer, layer.replace("block/", "layer1.0."))
  leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
          "var": "running_var"}.get(leaf, leaf)
  return f"{layer}.{leaf}"


@pytest.fixture(scope="module")
def resnet_family():
  """A tiny ResNet: theta_pre, a clean and two robust models."""
  model = _TinyResNet()
  pre = jax.tree.map(np.asarray, jax.jit(lambda k: model.init(
      k, jnp.zeros((1, 8, 8, 3))))(jax.random.key(0)))
  return model, {"pre": pre, "clean": _moved(pre, 1, 0.05),
                 "fog": _moved(pre, 2, 0.05), "contrast": _moved(pre, 3, 0.05)}


def test_average_follows_the_reference_rule(resnet_family):
  """'average' equals the reference's decompose rule computed with numpy on
  its state-dict keys: a key containing 'bn' or 'downsample' (BN tensors,
  running statistics, the shortcut conv, at every depth) is the mean over
  the robust models; another kept key is target + sum_i c_i v_i; the rest is
  the target's."""
  model, f = resnet_family
  order = trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  names, coefs = ["fog", "contrast"], [0.6, 1.3]
  # k=5 layers by depth: stem conv and bn, block conv1, bn1, conv2.
  sigs = [rws.extract(f["pre"]["params"], f["clean"]["params"],
                      f[c]["params"], first_k=5, order=order) for c in names]
  robust = [f[c] for c in names]
  images = [np.asarray(jax.random.uniform(jax.random.key(9), (4, 8, 8, 3)))]
  # blend=0: the statistics stay the robust mean (no re-estimation mixed
  # in), i.e. the tree the reference has before its bn_update.
  out = rws.patch_variables(
      f["clean"], sigs, coefs, batch_stats="average", blend=0.0,
      stats_fn=bn_modes.flax_stats_fn(model.apply), batches=images,
      robust_variables=robust)
  # The reference rule, on torch keys, in numpy.
  flat = {k: {**trees.flatten(v["params"]),
             **trees.flatten(v["batch_stats"])} for k, v in f.items()}
  kept = {_torch_key(p) for p in sigs[0].paths}
  got = {**trees.flatten(out["params"]),
         **trees.flatten(out["batch_stats"])}
  assert len(got) == 23 and "layer1.0.downsample.0.weight" in {
      _torch_key(p) for p in got}
  averaged = set()
  for ours in got:
    key = _torch_key(ours)
    if "bn" in key or "downsample" in key:
      want = np.mean([flat[c][ours].astype(np.float64) for c in names], 0)
      averaged.add(ours)
    elif key in kept:
      pre = flat["pre"][ours].astype(np.float64).ravel()
      d_s = flat["clean"][ours].astype(np.float64).ravel() - pre
      want = flat["clean"][ours].astype(np.float64).ravel()
      for c, coef in zip(names, coefs):
        d_c = flat[c][ours].astype(np.float64).ravel() - pre
        want = want + coef * (d_c - (d_c @ d_s) / (d_s @ d_s) * d_s)
      want = want.reshape(flat["pre"][ours].shape)
    else:
      want = flat["clean"][ours]
    np.testing.assert_allclose(got[ours], want, rtol=1e-5, atol=1e-7,
                               err_msg=f"{ours} ({key})")
  # The rule reaches the shortcut conv and BN tensors outside the kept
  # layers (block/bn2, block/shortcut/*).
  assert {"block/shortcut/conv/kernel", "block/shortcut/bn/var",
          "block/bn2/scale"} <= averaged
  assert batchnorm.is_averaged("stage2/block0/shortcut/conv/kernel")
  assert not batchnorm.is_averaged("stage2/block0/conv1/kernel")


def _reference_bn_update(variables, batches):
  """The reference's bn_update, literally: running statistics reset to 0
  and 1, then one training step per batch with momentum b / (n + b)."""
  stats = jax.tree.map(np.zeros_like, variables["batch_stats"])
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: np.ones_like(x) if path[-1].key == "var" else x, stats)
  n = 0
  for images in batches:
    b = len(images)
    torch_momentum = b / (n + b)
    _, updates = _TinyResNet(momentum=1.0 - torch_momentum).apply(
        {"params": variables["params"], "batch_stats": stats}, images,
        train=True, mutable=["batch_stats"])
    stats = jax.tree.map(np.asarray, updates["batch_stats"])
    n += b
  return stats


def test_average_reestimates_statistics_on_corrupted_data(resnet_family):
  """With coefficient 1 the running statistics become the cumulative
  average over the corrupted batches (unequal sizes: weighted by size);
  with coefficient 0.25 (the reference's alpha 0.5) half of it is blended
  with the robust mean."""
  from robustjax.data import corruptions
  model, f = resnet_family
  sig = rws.extract(f["pre"]["params"], f["clean"]["params"],
                    f["fog"]["params"], first_k=3)
  clean_images = np.asarray(jax.random.uniform(jax.random.key(5),
                                               (8, 8, 8, 3)))
  keys = jax.random.split(jax.random.key(6), 8)
  foggy = np.asarray(corruptions.apply_per_example(
      "fog", keys, jnp.asarray(clean_images), 5))
  batches = [foggy[:5], foggy[5:]]
  robust = [f["fog"], f["contrast"]]
  stats_fn = bn_modes.flax_stats_fn(model.apply)
  out = rws.patch_variables(f["clean"], sig, 1.0, batch_stats="average",
                            stats_fn=stats_fn, batches=batches,
                            robust_variables=robust)
  averaged_only = batchnorm.average_robust(f["clean"], robust)
  patched = {"params": out["params"],
             "batch_stats": averaged_only["batch_stats"]}
  want = _reference_bn_update(patched, batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-6),
               out["batch_stats"], want)
  # Changed from the robust mean, and not the clean data's statistics.
  mean_of = lambda t: t["block"]["bn2"]["mean"]
  assert not np.allclose(mean_of(out["batch_stats"]),
                         mean_of(averaged_only["batch_stats"]), atol=1e-3)
  on_clean = _reference_bn_update(patched, [clean_images[:5],
                                            clean_images[5:]])
  assert not np.allclose(mean_of(out["batch_stats"]), mean_of(on_clean),
                         atol=1e-3)
  # Coefficient 0.25 -> the reference's alpha = sqrt(0.25) = 0.5 < 1.
  assert batchnorm.reference_alpha([0.25]) == 0.5
  assert batchnorm.reference_alpha([0.25, 0.25]) == 1.0
  quarter = rws.patch_variables(f["clean"], sig, 0.25,
                                batch_stats="average", stats_fn=stats_fn,
                                batches=batches, robust_variables=robust)
  new = _reference_bn_update({"params": quarter["params"],
                              "batch_stats": averaged_only["batch_stats"]},
                             batches)
  jax.tree.map(lambda q, a, b: np.testing.assert_allclose(
      q, 0.5 * a + 0.5 * b, rtol=2e-5, atol=1e-6),
      quarter["batch_stats"], averaged_only["batch_stats"], new)
  # On a BN model, 'average' without data is refused.
  with pytest.raises(ConfigError, match="corruptions' training images"):
    rws.patch_variables(f["clean"], sig, batch_stats="average",
                        robust_variables=robust)


def test_corrupted_training_batches_are_the_training_images():
  """The task's re-estimation data: the training split corrupted with the
  corruption models' keys, one corruption after the other."""
  from robustjax import data
  from robustjax.data import corrupted
  train = data.load_split("cifar10", "train")
  split = data.ArraySplit(train.images[:50], train.labels[:50],
                          train.num_classes, "train")
  batches = list(corrupted.CorruptedBatches(split, 5, 0, 0, 32)(
      ["fog", "contrast"]))
  assert [len(b) for b in batches] == [32, 18, 32, 18]
  want = corrupted.corrupt_split(split, "fog", (5,), seed=0).images
  np.testing.assert_allclose(np.concatenate(batches[:2]), want / 255.0,
                             atol=1e-7)
  sub = corrupted.CorruptedBatches(split, 5, 0, 1, 16)
  assert sub.images_per_corruption == 16


def test_analysis_helpers(family):
  _, f = family
  a, b = _sig(family, "brightness"), _sig(family, "contrast")
  sim = analysis.similarity_matrix([a, a, b])
  assert sim[0, 1] == pytest.approx(1.0) and abs(sim[0, 2]) < 0.2
  prof = analysis.depth_profile(f["clean"]["params"],
                                f["brightness"]["params"])
  assert list(prof)[0] == "conv1" and list(prof)[-1] == "head/dense"
  st = analysis.storage(_sig(family, bits=8), f["clean"]["params"])
  assert st["ratio_bits"] > 2 * st["ratio_params"]


# ----------------------------------------------------- recipe and tasks

def _save(workdir, variables, spec=SPEC, step=5):
  return tiny_models.save_checkpoint(workdir, variables, spec, step)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, family):
  _, f = family
  root = tmp_path_factory.mktemp("rws")
  for name, v in f.items():
    _save(str(root / name), v)
  return str(root)


def test_configs_build():
  for arg in ("pre", "clean,init=/x", "corruption=fog,init=/x",
              "analyze,root=/r,corruptions=fog+contrast", "pre,smoke"):
    c = rws_config.get_config(arg)
    assert c.task in ("train", "rws_finetune", "rws")
  c = rws_config.get_config("corruption=fog,init=/x")
  assert c.dataset.corruption.names == "fog"
  assert c.dataset.corruption.severities == (5,)
  c = rws_config.get_config("analyze,root=/r,corruptions=fog+contrast")
  assert c.robust == "fog=/r/fog,contrast=/r/contrast"


def test_finetune_starts_from_theta_pre(saved, tmp_path):
  config = rws_config.get_config(
      f"corruption=brightness,init={saved}/pre,smoke,width=0.125")
  config.model.width = 0.125
  config.num_steps = 2
  config.progress_bar = False
  config.eval.update(every_steps=0, num_examples=32)
  config.final_eval = None  # the loop's own evaluation is tested elsewhere
  config.checkpoint.update(every_steps=2, async_save=False)
  workdir = str(tmp_path / "ft")
  report = tasks.run(config, workdir)
  assert report["steps"] == 2 and report["init_from"].endswith("5")
  start = checkpoint.load(workdir, step=0)  # the seeded checkpoint
  pre = checkpoint.load(f"{saved}/pre")
  end = checkpoint.load(workdir)
  assert end["step"] == 2
  jax.tree.map(np.testing.assert_array_equal, start["params"], pre["params"])
  # Fine-tuned, not re-initialised: still close to theta_pre.
  d_pre = sum(float(np.sum((a - b) ** 2)) for a, b in zip(
      jax.tree.leaves(end["params"]), jax.tree.leaves(pre["params"])))
  _, fresh = _init(123)
  d_fresh = sum(float(np.sum((a - b) ** 2)) for a, b in zip(
      jax.tree.leaves(end["params"]), jax.tree.leaves(fresh["params"])))
  assert d_pre < 0.1 * d_fresh
  bad = rws_config.get_config(f"clean,init={saved}/pre,smoke")  # width .25
  with pytest.raises(ConfigError, match="init_from holds model small_cnn "
                     "width 0.125"):
    tasks.run(bad, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def _launch(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_rws_task_through_launch(saved, tmp_path):
  workdir = tmp_path / "analysis"
  result = _launch(
      f"--config=configs/rws.py:analyze,smoke,root={saved},"
      "corruptions=brightness+contrast,k=4,bits=8", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "report:" in result.stdout and "patched_acc" in result.stdout
  assert "rws compose brightness+contrast (x1)" in result.stderr
  report = json.loads((workdir / "report.json").read_text())
  assert report["similarity"]["names"] == ["brightness", "contrast"]
  assert len(report["scaling"]["brightness"]) == 3
  assert report["per_corruption"]["contrast"]["robust_acc"] is not None
  assert report["storage"]["brightness"]["ratio_bits"] > 1
  assert report["depth_profile"]["brightness"][0]["layer"] == "conv1"
  # The default is the reference's BN rule: small_cnn's BN tensors come
  # from the robust mean (not the signature), statistics are re-estimated
  # on 2 x 32 corrupted training images per corruption (smoke).
  assert report["batch_stats"] == "average"
  assert report["bn_reestimation"]["images_per_corruption"] == 64
  assert report["averaged_params"] > 0
  assert not any(batchnorm.is_averaged(p) for p in report["layers"])
  for png in ("depth_profile", "similarity", "scaling"):
    assert (workdir / f"{png}.png").stat().st_size > 1000
  sig = rws.load(str(workdir / "signatures" / "contrast.rws"))
  assert sig.bits == 8 and sig.meta["corruption"] == "contrast"
  assert sig.meta["theta_pre"].startswith(saved)
  # Bad input: one line, exit 2, nothing written.
  bad = tmp_path / "bad"
  result = _launch(
      f"--config=configs/rws.py:analyze,smoke,root={saved},"
      "corruptions=brightness,bits=40", f"--workdir={bad}")
  assert result.returncode == 2
  assert "bits=40 must be an integer from 1 to 32" in result.stderr
  assert not bad.exists()


# ------------------------------------------------------------- transfer

def _finetune(saved, workdir, arg):
  config = rws_config.get_config(
      f"{arg},init={saved}/pre,smoke,width=0.125")
  config.model.width = 0.125
  config.num_steps = 2
  config.progress_bar = False
  config.eval.update(every_steps=0, num_examples=32)
  config.final_eval = None
  config.checkpoint.update(every_steps=2, async_save=False)
  return tasks.run(config, workdir)


def test_transfer_to_a_target_of_another_class_count(saved, family,
                                                     tmp_path):
  """theta_pre has 10 classes; the signature's models and the target are
  fine-tuned on 3 classes (fresh heads); the task evaluates the target on
  its own classes and patches exactly target + signature."""
  from robustjax.tasks import rws as rws_task, rws_finetune
  # The target: fine-tuned from theta_pre on classes 3-5, so its head is
  # re-initialised with 3 outputs and every other layer starts at theta_pre.
  target_dir = str(tmp_path / "B_clean")
  _finetune(saved, target_dir, "clean,classes=3-5")
  pre = checkpoint.load(f"{saved}/pre")
  start = checkpoint.load(target_dir, step=0)
  assert start["meta"]["reinitialised"] == ["head/dense"]
  assert start["meta"]["model"]["num_classes"] == 3
  assert start["params"]["head"]["dense"]["kernel"].shape[-1] == 3
  for path, leaf in trees.flatten(start["params"]).items():
    if not path.startswith("head/"):
      np.testing.assert_array_equal(leaf, trees.flatten(pre["params"])[path])
  # Dataset A's models: 3 classes too (synthetic moves from theta_pre).
  model, _ = _init(0)
  model3 = models.create_model("small_cnn", num_classes=3, width=0.125)
  base, _ = rws_finetune.start_variables(
      _variables_of(pre), model3, dict(SPEC, num_classes=3), (32, 32, 3), 0)
  spec3 = dict(SPEC, num_classes=3)
  root = tmp_path / "A"
  _save(str(root / "clean"), _moved(base, 1, 0.02), spec3)
  _save(str(root / "brightness"), _moved(base, 2, 0.02), spec3)
  config = rws_config.get_config(
      f"analyze,smoke,root={root},corruptions=brightness,k=4,"
      f"target={target_dir}")
  config.theta_pre = f"{saved}/pre"
  # The target with the signature added and nothing else (BN included).
  config.batch_stats = "keep_a"
  workdir = str(tmp_path / "analysis")
  report = tasks.run(config, workdir)
  assert report["transfer"] and report["classes"] == [3, 4, 5]
  assert report["target_model"]["num_classes"] == 3
  assert report["per_corruption"]["brightness"]["robust_acc"] is None
  # The signature is the projection of A's robust delta from the 10-class
  # theta_pre; patching changes exactly the kept layers of the target.
  sig = rws.load(os.path.join(workdir, "signatures", "brightness.rws"))
  assert sig.paths and not any(p.startswith("head/") for p in sig.paths)
  target = checkpoint.load(target_dir)
  patched = rws.patch(target["params"], sig)
  flat_t, flat_p = trees.flatten(target["params"]), trees.flatten(patched)
  for path in flat_t:
    want = flat_t[path] + sig.tensors[path] if path in sig.tensors \
        else flat_t[path]
    np.testing.assert_allclose(flat_p[path], want, rtol=1e-6, atol=1e-7)
  # ... and the task evaluated that patched target on classes 3-5.
  from robustjax import data, sharding
  split = data.class_subset(data.load_split("cifar10", "test"), (3, 4, 5))
  ev = rws_task._Evaluator(model3, split, sharding.make_mesh(None), 32, 32,
                           5, 0)
  acc = ev.accuracy({"params": patched, "batch_stats": target["batch_stats"]},
                    "brightness")
  assert acc == report["per_corruption"]["brightness"]["patched_acc"]
  # Other classes than the target's are refused before anything is written.
  config.dataset.classes = "0-2"
  with pytest.raises(ConfigError, match="trained on classes '3-5'"):
    tasks.run(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def _variables_of(restored):
  return {"params": restored["params"],
          "batch_stats": restored["batch_stats"]}
