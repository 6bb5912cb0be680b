"""Datasets as in-memory arrays: the registry, ``load_split``, ``holdout_split``.

Every split is a whole ``ArraySplit`` in host memory (CIFAR/SVHN are small), so
the input pipeline only gathers rows by index; see ``pipeline.py``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from robustjax.data import embedded, tfds_source
from robustjax.errors import ConfigError

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset.

  Attributes:
    name: our name (``'cifar10'``, ``'cifar100'``, ``'svhn'``).
    num_classes: number of labels.
    image_shape: ``(H, W, C)``.
    sources: the ``source=`` values ``load_split`` accepts for it.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  sources: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), ("embedded", "tfds")),
    "cifar100": DatasetInfo("cifar100", 100, (32, 32, 3), ("tfds",)),
    "svhn": DatasetInfo("svhn", 10, (32, 32, 3), ("tfds",)),
}


# eq=False: numpy arrays have no single truth value, so generated __eq__ would
# raise; identity comparison is what a frozen container of arrays can offer.
@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
  """One split of a dataset, held in host memory.

  Attributes:
    images: uint8 ``[N, H, W, 3]``.
    labels: int32 ``[N]``, in ``[0, num_classes)``.
    num_classes: number of labels of the dataset.
    name: the dataset name, e.g. ``'cifar10'``.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"images must be uint8 [N,H,W,C], got "
                       f"{self.images.dtype} {self.images.shape}")
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"labels must be int32 [{self.images.shape[0]}], got "
                       f"{self.labels.dtype} {self.labels.shape}")

  def __len__(self) -> int:
    return self.images.shape[0]

  def take(self, indices: np.ndarray) -> "ArraySplit":
    """The rows ``indices`` (int ``[M]``) as a new split."""
    return ArraySplit(self.images[indices], self.labels[indices],
                      self.num_classes, self.name)


def load_split(
    name: str = "cifar10",
    split: str = "train",
    *,
    source: str = "embedded",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ArraySplit:
  """Loads a whole split into memory.

  Args:
    name: a key of ``DATASETS``.
    split: ``'train'`` or ``'test'``.
    source: ``'embedded'`` (the CIFAR-10 JPEG copy shipped in ``data/``,
      cifar10 only, works offline) or ``'tfds'``.
    data_dir: embedded: folder with ``{train,test}.tar.gz`` (default
      ``<repo>/data/cifar10-jpeg``); tfds: the TFDS data folder.
    cache_dir: embedded only: where the decoded ``.npz`` lives (default
      ``<repo>/data/cache``).

  Returns:
    An ``ArraySplit`` with uint8 ``[N, H, W, 3]`` images and int32 ``[N]``
    labels, in a fixed, class-mixed order (see ``embedded.py`` for the
    embedded order; TFDS keeps its own).

  Raises:
    ConfigError: unknown name, split or source, or data that cannot be found.
  """
  if name not in DATASETS:
    raise ConfigError(f"unknown dataset {name!r}; choose one of "
                      f"{', '.join(sorted(DATASETS))}")
  info = DATASETS[name]
  if split not in SPLITS:
    raise ConfigError(f"unknown split {split!r}; choose one of "
                      f"{', '.join(SPLITS)}")
  if source not in ("embedded", "tfds"):
    raise ConfigError(f"unknown data source {source!r}; choose 'embedded' "
                      f"(cifar10 only) or 'tfds'")
  if source not in info.sources:
    raise ConfigError(f"source={source!r} is not available for {name!r} "
                      f"(only cifar10 is embedded); use source='tfds'")

  if source == "embedded":
    images, labels = embedded.load_cifar10_jpeg(split, data_dir, cache_dir)
  else:
    images, labels = tfds_source.load_tfds(name, split, data_dir)

  if images.shape[1:] != info.image_shape:
    raise ConfigError(f"{name} {split} images have shape {images.shape[1:]}, "
                      f"expected {info.image_shape}; check data_dir")
  if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
    raise ConfigError(f"{name} {split} labels fall outside "
                      f"[0, {info.num_classes}); check data_dir")
  return ArraySplit(images, labels, info.num_classes, name)


def holdout_split(split: ArraySplit, val_size: int, seed: int = 0
                  ) -> tuple[ArraySplit, ArraySplit | None]:
  """Splits off a fixed validation set of ``val_size`` examples.

  The two parts are disjoint and together cover ``split``. Which rows go to
  validation is a permutation from ``np.random.default_rng(seed)``; within
  each part the original row order is kept.

  Returns:
    ``(train, val)``; ``val`` is None when ``val_size`` is 0.
  """
  n = len(split)
  if not 0 <= val_size < n:
    raise ConfigError(f"val_size={val_size} must be in [0, {n}) for "
                      f"{split.name} with {n} examples; lower it")
  if val_size == 0:
    return split, None
  perm = np.random.default_rng(seed).permutation(n)
  val_idx = np.sort(perm[:val_size])
  train_idx = np.sort(perm[val_size:])
  return split.take(train_idx), split.take(val_idx)
