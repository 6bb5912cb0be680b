"""Tests for robustjax.data: sources, augmentation, batch pipelines."""

import io
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image

from robustjax import data, sharding
from robustjax.data import augment, embedded, pipeline
from robustjax.errors import ConfigError

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465]) * 255


# ---------------------------------------------------------------- embedded

@pytest.fixture(scope="module")
def cifar():
  """Both embedded splits, decoded once (the default cache makes reruns fast)."""
  return {s: data.load_split("cifar10", s) for s in ("train", "test")}


@pytest.mark.parametrize("split,n", [("train", 50_000), ("test", 10_000)])
def test_embedded_shapes_and_counts(cifar, split, n):
  s = cifar[split]
  assert s.images.shape == (n, 32, 32, 3) and s.images.dtype == np.uint8
  assert s.labels.shape == (n,) and s.labels.dtype == np.int32
  assert s.num_classes == 10 and s.name == "cifar10" and len(s) == n
  np.testing.assert_array_equal(np.bincount(s.labels, minlength=10),
                                [n // 10] * 10)
  assert n == embedded.EXPECTED_SIZES[split]


def test_embedded_first_points_are_class_mixed(cifar):
  counts = np.bincount(cifar["test"].labels[:1000], minlength=10)
  assert counts.min() >= 50, counts  # not one class, not dominated by one
  assert len(set(cifar["train"].labels[:100].tolist())) == 10


def test_embedded_pixels_match_cifar10(cifar):
  mean = cifar["train"].images.reshape(-1, 3).mean(0)
  np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=2.0)
  assert cifar["test"].images.min() == 0 and cifar["test"].images.max() == 255


def test_embedded_labels_follow_class_order(cifar):
  # Sky and sea: airplane (0) and ship (8) are the two bluest CIFAR-10 classes.
  s = cifar["train"]
  blue_minus_red = [
      np.diff(s.images[s.labels == k][..., [0, 2]].astype(np.float32).mean(
          (0, 1, 2)))[0] for k in range(10)]
  assert set(np.argsort(blue_minus_red)[-2:].tolist()) == {0, 8}
  assert data.CLASS_NAMES[0] == "airplane" and data.CLASS_NAMES[9] == "truck"


def test_embedded_deterministic_and_cached(cifar, tmp_path, monkeypatch):
  first = data.load_split("cifar10", "test", cache_dir=tmp_path)
  cache_files = list(tmp_path.glob("*.npz"))
  assert len(cache_files) == 1 and not list(tmp_path.glob("*.tmp"))

  def no_decode(*args, **kwargs):
    raise AssertionError("decoded again instead of using the cache")
  monkeypatch.setattr(embedded, "decode_archive", no_decode)
  second = data.load_split("cifar10", "test", cache_dir=tmp_path)
  for other in (second, cifar["test"]):  # fresh decode == cached == default
    np.testing.assert_array_equal(first.images, other.images)
    np.testing.assert_array_equal(first.labels, other.labels)


def _fake_archive(root, split, classes):
  """A tiny ImageFolder tarball: each image's pixels encode (class, index)."""
  root.mkdir(parents=True, exist_ok=True)
  with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tar:
    for name in classes:
      for i in range(3):
        buf = io.BytesIO()
        value = 20 * data.CLASS_NAMES.index(name) + 5 * i if (
            name in data.CLASS_NAMES) else 0
        Image.new("RGB", (32, 32), (value, value, value)).save(
            buf, "JPEG", quality=95)
        info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
        info.size = buf.tell()
        buf.seek(0)
        tar.addfile(info, buf)


def test_decode_maps_folders_to_class_order(tmp_path):
  # Archive order deliberately not class order: labels come from the names.
  _fake_archive(tmp_path / "d", "test", ["truck", "airplane", "frog"])
  s = data.load_split("cifar10", "test", data_dir=tmp_path / "d",
                      cache_dir=tmp_path / "c")
  assert len(s) == 9
  np.testing.assert_array_equal(np.bincount(s.labels, minlength=10),
                                [3, 0, 0, 0, 0, 0, 3, 0, 0, 3])
  pixel = s.images[:, 16, 16, 0].astype(int)
  np.testing.assert_array_equal(pixel // 20, s.labels)  # value = 20*label+5i


def test_decode_rejects_unknown_class(tmp_path):
  _fake_archive(tmp_path, "test", ["airplane", "spaceship"])
  with pytest.raises(ConfigError, match="spaceship"):
    data.load_split("cifar10", "test", data_dir=tmp_path,
                    cache_dir=tmp_path / "c")


def test_config_errors(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(ConfigError, match="nowhere"):
    data.load_split("cifar10", "test", data_dir=missing)
  with pytest.raises(ConfigError, match="test.tar.gz"):
    data.load_split("cifar10", "test", data_dir=tmp_path)  # dir, no archive
  with pytest.raises(ConfigError, match="source='tfds'"):
    data.load_split("cifar100", "test", source="embedded")
  with pytest.raises(ConfigError, match="cifar10, cifar100, svhn"):
    data.load_split("imagenet", "test")
  with pytest.raises(ConfigError, match="split"):
    data.load_split("cifar10", "validation")
  with pytest.raises(ConfigError, match="source"):
    data.load_split("cifar10", "test", source="s3")


# ---------------------------------------------------------------- tfds

@pytest.mark.parametrize("name,num_classes", [("cifar10", 10),
                                              ("cifar100", 100), ("svhn", 10)])
def test_tfds_source_with_mock_data(name, num_classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=7):
    s = data.load_split(name, "train", source="tfds")
  assert s.images.shape == (7, 32, 32, 3) and s.images.dtype == np.uint8
  assert s.labels.shape == (7,) and s.labels.dtype == np.int32
  assert s.num_classes == num_classes == data.DATASETS[name].num_classes
  assert s.labels.min() >= 0 and s.labels.max() < num_classes


def test_tfds_failure_is_config_error(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  def fail(*args, **kwargs):
    raise OSError("no network\nsecond line")
  monkeypatch.setattr(tfds, "load", fail)
  with pytest.raises(ConfigError, match="data_dir") as e:
    data.load_split("svhn", "test", source="tfds", data_dir=tmp_path)
  assert "\n" not in str(e.value) and "svhn_cropped" in str(e.value)


# ---------------------------------------------------------------- splits

def _toy_split(n=100, hw=4):
  """Row i has every pixel = i % 256 and label i, so rows are traceable."""
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None,
                                                                 None],
                           (n, hw, hw, 3)).copy()
  return data.ArraySplit(images, np.arange(n, dtype=np.int32), 10, "toy")


def test_holdout_split_disjoint_covering_deterministic():
  s = _toy_split(100)
  train, val = data.holdout_split(s, 30, seed=1)
  assert len(train) == 70 and len(val) == 30
  assert set(train.labels) | set(val.labels) == set(range(100))
  assert not set(train.labels) & set(val.labels)
  again = data.holdout_split(s, 30, seed=1)[1]
  np.testing.assert_array_equal(val.labels, again.labels)
  other = data.holdout_split(s, 30, seed=2)[1]
  assert set(other.labels) != set(val.labels)
  assert data.holdout_split(s, 0) == (s, None)
  with pytest.raises(ConfigError):
    data.holdout_split(s, 100)


# ---------------------------------------------------------------- augment

def _rand_images(b=16, hw=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, hw, hw, 3),
                                              dtype=np.uint8)


def test_random_crop_flip_shape_range_identity():
  x = _rand_images()
  key = jax.random.key(0)
  y = data.random_crop_flip(key, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
  ident = data.random_crop_flip(key, x, pad=0, flip=False)
  np.testing.assert_array_equal(ident, data.to_float(x))
  # Float input in [0, 1] is used as is.
  np.testing.assert_allclose(data.random_crop_flip(key, data.to_float(x)), y,
                             rtol=1e-6)


def test_random_crop_flip_is_shifted_window_of_padded_image():
  x, pad = _rand_images(b=64), 4
  key = jax.random.key(3)
  dy, dx, flip = map(np.asarray, augment.crop_flip_params(key, 64, pad))
  y = np.asarray(data.random_crop_flip(key, x, pad=pad))
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for i in range(64):
    window = padded[i, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] / 255.0
    np.testing.assert_allclose(y[i], window[:, ::-1] if flip[i] else window,
                               rtol=1e-6)
  # Offsets span torchvision's range [0, 2 * pad]; both flip outcomes occur.
  assert dy.min() == 0 and dy.max() == 2 * pad and 0 < flip.sum() < 64


def test_random_crop_flip_deterministic_and_jittable():
  x = _rand_images()
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = data.random_crop_flip(k1, x)
  np.testing.assert_array_equal(a, data.random_crop_flip(k1, x))
  assert not np.array_equal(a, data.random_crop_flip(k2, x))
  jitted = jax.jit(lambda k, im: data.random_crop_flip(k, im, pad=4))
  np.testing.assert_allclose(jitted(k1, x), a, rtol=1e-6)


# ---------------------------------------------------------------- batches

def test_train_batches_deterministic_resumable_sharded():
  mesh = sharding.make_mesh(8)
  s = _toy_split(100)
  tb = data.TrainBatches(s, 16, seed=5, mesh=mesh)
  assert tb.steps_per_epoch == 6
  b = tb.batch(7)
  assert b["image"].shape == (16, 4, 4, 3) and b["image"].dtype == jnp.uint8
  assert b["label"].shape == (16,) and b["label"].dtype == jnp.int32
  for v in b.values():
    assert v.sharding.spec == P(sharding.DATA_AXIS)
    assert v.sharding.mesh.devices.size == 8
  # Pixels and labels stay paired.
  np.testing.assert_array_equal(np.asarray(b["image"])[:, 0, 0, 0],
                                np.asarray(b["label"]) % 256)
  # A fresh object with the same seed gives the same batch: (seed, step) only.
  fresh = data.TrainBatches(s, 16, seed=5, mesh=mesh)
  np.testing.assert_array_equal(fresh.batch(7)["label"], b["label"])
  assert not np.array_equal(
      data.TrainBatches(s, 16, seed=6, mesh=mesh).batch(7)["label"],
      b["label"])

  full = [(i, np.asarray(x["label"])) for i, x in tb.iterate(0, 10)]
  resumed = [(i, np.asarray(x["label"])) for i, x in fresh.iterate(4, 6)]
  assert [i for i, _ in full] == list(range(10))
  for (i, a), (j, r) in zip(full[4:], resumed, strict=True):
    assert i == j
    np.testing.assert_array_equal(a, r)


def test_train_batches_epochs_visit_each_index_at_most_once():
  tb = data.TrainBatches(_toy_split(100), 16, seed=0,
                         mesh=sharding.make_mesh(8))
  epochs = []
  for epoch in range(3):
    idx = np.concatenate([tb.global_indices(epoch * 6 + k) for k in range(6)])
    assert len(set(idx.tolist())) == 96
    epochs.append(idx)
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch


def test_train_batches_host_slices_tile_the_global_batch():
  tb = data.TrainBatches(_toy_split(100), 16, seed=0,
                         mesh=sharding.make_mesh(8))
  for count in (1, 2, 4):
    parts = [tb.host_batch(3, p, count)["label"] for p in range(count)]
    assert {len(p) for p in parts} == {16 // count}
    np.testing.assert_array_equal(np.concatenate(parts), tb.global_indices(3))
  assert pipeline.host_rows(16, 1, 4) == slice(4, 8)


def test_train_batches_validation():
  s, mesh = _toy_split(100), sharding.make_mesh(8)
  with pytest.raises(ConfigError, match="divide"):
    data.TrainBatches(s, 12, seed=0, mesh=mesh)
  with pytest.raises(ConfigError, match="larger"):
    data.TrainBatches(s, 104, seed=0, mesh=mesh)


def test_iterate_stops_cleanly_on_break_and_reraises_errors():
  tb = data.TrainBatches(_toy_split(100), 8, seed=0, mesh=sharding.make_mesh(8))
  for step, _ in tb.iterate(0):  # endless; break must not hang or leak
    if step == 2:
      break

  def broken():
    yield 1
    raise RuntimeError("boom")
  it = pipeline._prefetch(broken)
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(it)


def test_eval_batches_cover_in_order_with_mask():
  mesh = sharding.make_mesh(8)
  s = _toy_split(100)
  batches = list(data.eval_batches(s, 16, mesh, num_examples=37))
  assert len(batches) == 3
  for b in batches:
    assert b["image"].shape == (16, 4, 4, 3) and b["mask"].shape == (16,)
    assert b["mask"].sharding.spec == P(sharding.DATA_AXIS)
  mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  images = np.concatenate([np.asarray(b["image"]) for b in batches])
  assert mask.sum() == 37 and mask[:37].all()
  np.testing.assert_array_equal(labels[mask], np.arange(37))  # unshuffled
  assert not images[~mask].any() and not labels[~mask].any()
  everything = list(data.eval_batches(s, 8, mesh))
  assert sum(int(b["mask"].sum()) for b in everything) == 100
  with pytest.raises(ConfigError):
    data.eval_batches(s, 8, mesh, num_examples=101)


# ------------------------------------------------------------ class subsets

def _labelled_split(n=40, num_classes=10):
  """Row i has every pixel = i and label i % num_classes."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                           (n, 2, 2, 3)).copy()
  return data.ArraySplit(images, (np.arange(n) % num_classes).astype(np.int32),
                         num_classes, "toy")


@pytest.mark.parametrize("spec,want", [
    ("", None), ("0-4", (0, 1, 2, 3, 4)), ("5-9", (5, 6, 7, 8, 9)),
    ("0,2,4", (0, 2, 4)), (" 7 , 3 ", (7, 3)), ("0-1,8-9", (0, 1, 8, 9)),
    ((9, 0), (9, 0))])
def test_parse_classes(spec, want):
  assert data.parse_classes(spec, 10) == want


@pytest.mark.parametrize("spec,match", [
    ("0-10", "names class 10, but the dataset has classes 0-9"),
    ("-1", "entry '-1'"), ("3,1,3", "names class 3 more than once"),
    ("0-4,4", "more than once"), ("6", "keeps 1 of the 10 classes"),
    ("a-b", "entry 'a-b'"), ("4-2", "descending range '4-2'"),
    ("0,,1", "entry ''")])
def test_parse_classes_refuses_bad_values_in_one_line(spec, match):
  with pytest.raises(ConfigError, match=match) as err:
    data.parse_classes(spec, 10)
  assert "\n" not in str(err.value) and "dataset.classes" in str(err.value)


def test_class_subset_keeps_order_and_relabels_in_the_given_order():
  s = _labelled_split()
  half = data.class_subset(s, (7, 2))
  assert half.num_classes == 2 and half.name == "toy" and len(half) == 8
  rows = half.images[:, 0, 0, 0]
  np.testing.assert_array_equal(rows, [2, 7, 12, 17, 22, 27, 32, 37])
  np.testing.assert_array_equal(half.labels, [1, 0] * 4)  # 7 -> 0, 2 -> 1
  assert half.labels.dtype == np.int32
  with pytest.raises(ConfigError, match="names class 10"):
    data.class_subset(s, (1, 10))


def test_load_data_applies_dataset_classes_to_every_split():
  from configs import common
  from robustjax.training.loop import load_data
  config = common.base_config()
  config.dataset.update(classes="5-9", val_size=1000)
  train, val, test = load_data(config)
  for split, n in ((train, 24_000), (val, 1000), (test, 5000)):
    assert split.num_classes == 5 and len(split) == n
    assert set(np.unique(split.labels)) <= set(range(5))
  full = data.load_split("cifar10", "test")
  np.testing.assert_array_equal(test.labels, full.labels[full.labels >= 5] - 5)
  np.testing.assert_array_equal(test.images, full.images[full.labels >= 5])
  config.dataset.classes = "5"
  with pytest.raises(ConfigError, match="at least 2"):
    load_data(config)
