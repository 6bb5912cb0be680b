"""Corrupted copies of a split: generated with ``data.corruptions`` or read
from the official CIFAR-10-C files through TFDS (``cifar10_corrupted``).

  train_c = corrupt_split(train, "fog", severities=(5,))           # RWS: one type
  mixed = corrupt_split(train, "all19", severities=(5,), mode="random")
  test_c = load_cifar10_corrupted("fog", 3, data_dir=DIR)          # official files

Image i of a split under corruption c at severity s always gets the key
``corruption_key(seed, c, s, i)``, whatever the batching, so a generated copy
equals what ``evaluation.evaluate_corruptions`` corrupts on the fly.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from robustjax.data import corruptions
from robustjax.data.sources import ArraySplit
from robustjax.errors import ConfigError

MODES = ("single", "random")
_CHUNK = 1000  # images corrupted per call while materialising a split

# Our name -> the TFDS cifar10_corrupted config prefix.
TFDS_NAMES = {name: name for name in corruptions.CORRUPTIONS}
TFDS_NAMES["elastic_transform"] = "elastic"


def corruption_key(seed: int, name: str, severity: int) -> jax.Array:
  """The key of one (corruption, severity); fold in an image's index in its
  split for that image's key."""
  key = jax.random.key(seed)
  key = jax.random.fold_in(key, corruptions.CORRUPTIONS.index(name))
  return jax.random.fold_in(key, severity)


def corrupt_images(images: np.ndarray, indices: np.ndarray, name: str,
                   severity: int, seed: int = 0, rounding: str = "floor"
                   ) -> np.ndarray:
  """Corrupts uint8 ``images`` ``[N, H, W, C]`` whose split positions are
  ``indices`` ``[N]``; returns uint8 ``[N, H, W, C]`` (``rounding='floor'``
  truncates as CIFAR-10-C's files do)."""
  base = corruption_key(seed, name, severity)
  out = np.empty_like(images)
  for start in range(0, len(images), _CHUNK):
    stop = min(start + _CHUNK, len(images))
    x = images[start:stop].astype(np.float32) / 255.0
    keys = jax.vmap(jax.random.fold_in, (None, 0))(
        base, np.asarray(indices[start:stop], np.uint32))
    y = corruptions.apply_per_example(name, keys, x, severity)
    out[start:stop] = np.asarray(corruptions.to_uint8(y, rounding))
  return out


def corrupt_split(split: ArraySplit, names: str | tuple[str, ...],
                  severities: tuple[int, ...] = (5,), *, mode: str = "single",
                  seed: int = 0, rounding: str = "floor") -> ArraySplit:
  """A corrupted copy of ``split`` (same size, labels and order).

  Args:
    split: the clean split.
    names: a corruption, a list name (``rift18``, ``benchmark15``,
      ``all19``) or several names.
    severities: severities to draw from.
    mode: ``'single'``: every image gets the one corruption at the one
      severity (``names`` and ``severities`` must have one entry each; RWS's
      per-corruption training sets). ``'random'``: each image gets a
      corruption and a severity drawn uniformly (fixed by ``seed``; RWS's
      multi-corruption set).
    seed: the corruption randomness and, for ``'random'``, the assignment.
    rounding: ``'floor'`` (as the CIFAR-10-C files) or ``'round'``.

  Returns:
    An ``ArraySplit`` with uint8 corrupted images.
  """
  names = corruptions.resolve(names)
  severities = tuple(int(s) for s in severities)
  if not severities:
    raise ConfigError("no corruption severities given; pass e.g. (5,)")
  for s in severities:
    corruptions.check_severity(s)
  if mode not in MODES:
    raise ConfigError(f"unknown corruption mode {mode!r}; choose 'single' "
                      "(one corruption for every image) or 'random' (one "
                      "per image)")
  n = len(split)
  if mode == "single":
    if len(names) != 1 or len(severities) != 1:
      raise ConfigError(
          f"mode='single' needs one corruption and one severity, got "
          f"{len(names)} and {len(severities)}; use mode='random' for a mix")
    which = np.zeros(n, np.int64)
    level = np.zeros(n, np.int64)
  else:
    rng = np.random.default_rng([seed, 1])
    which = rng.integers(len(names), size=n)
    level = rng.integers(len(severities), size=n)
  images = split.images.copy()
  for ci, name in enumerate(names):
    for si, severity in enumerate(severities):
      rows = np.nonzero((which == ci) & (level == si))[0]
      if rows.size:
        images[rows] = corrupt_images(split.images[rows], rows, name,
                                      severity, seed, rounding)
  return ArraySplit(images, split.labels, split.num_classes, split.name)


def load_cifar10_corrupted(name: str, severity: int,
                           data_dir: str | os.PathLike | None = None
                           ) -> ArraySplit:
  """One (corruption, severity) of the official CIFAR-10-C test files, from
  TFDS ``cifar10_corrupted/<name>_<severity>`` (10,000 images; TFDS cannot
  download them here: prepare them with ``tfds build`` where it can)."""
  corruptions.check_name(name)
  corruptions.check_severity(severity)
  from robustjax.data import tfds_source  # TFDS is imported lazily there
  images, labels = tfds_source.load_tfds_builder(
      f"cifar10_corrupted/{TFDS_NAMES[name]}_{int(severity)}", "test",
      data_dir)
  return ArraySplit(images, labels, 10, "cifar10")


@dataclasses.dataclass(frozen=True)
class CorruptionSpec:
  """Which splits of a dataset are replaced by corrupted copies, and how
  (RWS-style training on corrupted data).

  names: a corruption, a list name (``rift18`` ...) or ``none``.
  severities: the severities drawn from.
  mode: ``single`` (one corruption at one severity) or ``random`` (each
    image gets one of ``names`` x ``severities``).
  seed: keys the corruptions (with each image's index).
  splits: comma-separated subset of ``train,val,test`` to corrupt.
  """
  names: str = "none"
  severities: tuple[int, ...] = (5,)
  mode: str = "single"
  seed: int = 0
  splits: str = "train,test"

  @property
  def enabled(self) -> bool:
    return str(self.names) not in ("", "none")

  def validated(self) -> "CorruptionSpec":
    """Self, or a one-line ConfigError naming the bad field."""
    if not self.enabled:
      return self
    names = corruptions.resolve(str(self.names))
    severities = tuple(int(s) for s in self.severities)
    for s in severities:
      corruptions.check_severity(s)
    if self.mode not in MODES:
      raise ConfigError(f"unknown dataset.corruption.mode {self.mode!r}; "
                        "choose 'single' or 'random'")
    if self.mode == "single" and (len(names) != 1 or len(severities) != 1):
      raise ConfigError("dataset.corruption.mode='single' needs one "
                        "corruption and one severity; use mode='random' for "
                        "a mix")
    for split in str(self.splits).split(","):
      if split.strip() not in ("train", "val", "test"):
        raise ConfigError(f"dataset.corruption.splits has {split!r}; use a "
                          "comma-separated subset of train,val,test")
    return self

  def apply(self, split: ArraySplit, which: str) -> ArraySplit:
    """``split`` corrupted if ``which`` (``'train'``, ``'val'`` or
    ``'test'``) is one of ``splits``; otherwise ``split`` unchanged."""
    wanted = [s.strip() for s in str(self.splits).split(",")]
    if not self.enabled or which not in wanted:
      return split
    return corrupt_split(split, str(self.names),
                         tuple(int(s) for s in self.severities),
                         mode=self.mode, seed=int(self.seed))


class CorruptedBatches:
  """Float batches of a split, corrupted with given corruptions (or
  ``"clean"``), for re-estimating BatchNorm statistics on corrupted data
  (RWS's ``batch_stats='average'``; ``'recompute'`` uses the clean ones).

  Image i of the split is corrupted with the key the training data of the
  corruption models used (``data.corrupted.corruption_key``), so with
  ``num_batches=0`` a corruption's batches are that model's training images,
  un-augmented. Each corrupted copy is made once (uint8) and reused.

  Args:
    split: the (clean) training split, uint8 ``[N, H, W, C]``.
    severity, seed: of the corruptions.
    num_batches: batches per corruption; 0 = all of ``split`` (the last
      batch may be smaller), else a fixed random subset of
      ``num_batches * batch_size`` images.
    batch_size: images per batch.
  """

  def __init__(self, split: ArraySplit, severity: int, seed: int,
               num_batches: int, batch_size: int):
    if num_batches < 0 or batch_size < 1:
      raise ConfigError(f"bn_batches={num_batches} and bn_batch_size="
                        f"{batch_size}: use bn_batches >= 0 (0 = one pass) "
                        "and bn_batch_size >= 1")
    n = len(split)
    if num_batches:
      rows = np.sort(np.random.default_rng([seed, 2]).permutation(n)[
          :min(n, num_batches * batch_size)])
    else:
      rows = np.arange(n)
    self.images, self.rows = split.images[rows], rows
    self.severity, self.seed, self.batch_size = severity, seed, batch_size
    self._copies: dict[str, np.ndarray] = {}

  @property
  def images_per_corruption(self) -> int:
    return len(self.rows)

  def __call__(self, names: list[str]):
    """One pass over each corruption's images in turn (``"clean"``: the
    clean images): float32 ``[B, H, W, C]`` in [0, 1]."""
    for name in names:
      if name == "clean":
        self._copies[name] = self.images
      elif name not in self._copies:
        self._copies[name] = corrupt_images(
            self.images, self.rows, name, self.severity, self.seed)
      images = self._copies[name]
      for start in range(0, len(images), self.batch_size):
        yield images[start:start + self.batch_size].astype(
            np.float32) / 255.0
