"""Datasets as in-memory arrays: the registry, ``load_split``, ``holdout_split``,
``class_subset`` (some classes, relabelled 0..K-1; ``dataset.classes``).

Every split is a whole ``ArraySplit`` in host memory (CIFAR/SVHN are small), so
the input pipeline only gathers rows by index; see ``pipeline.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

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
    images: uint8 ``[N, H, W, 3]``, or float32 in [0, 1] for computed
      images (adversarial examples); ``to_float`` handles both.
    labels: int32 ``[N]``, in ``[0, num_classes)``.
    num_classes: number of labels of the dataset.
    name: the dataset name, e.g. ``'cifar10'``.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    if self.images.dtype not in (np.uint8, np.float32) or \
        self.images.ndim != 4:
      raise ValueError(f"images must be uint8 or float32 [N,H,W,C], got "
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


# ------------------------------------------------------------ class subsets

def parse_classes(spec: str | Sequence[int] | None, num_classes: int,
                  what: str = "dataset.classes") -> tuple[int, ...] | None:
  """Reads a class selection such as ``"0-4"``, ``"5-9"`` or ``"0,2,4"``.

  Args:
    spec: ranges ``a-b`` (inclusive) and single classes, comma-separated,
      or a sequence of ints; ``""``/``None`` means all classes.
    num_classes: how many classes the full dataset has.
    what: the config key named in error messages.

  Returns:
    The classes in the given order (class ``classes[i]`` becomes label
    ``i``), or None for all classes.

  Raises:
    ConfigError: an unreadable entry, a class outside ``[0, num_classes)``,
      a repeated class or fewer than 2 classes.
  """
  if spec is None or (isinstance(spec, str) and not spec.strip()):
    return None
  if isinstance(spec, str):
    classes: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
      low, sep, high = item.partition("-")
      try:
        first, last = int(low), int(high if sep else low)
      except ValueError:
        raise ConfigError(f"{what}={spec!r} has the entry {item!r}; write "
                          "classes as ranges and numbers, e.g. '0-4' or "
                          "'0,2,4'") from None
      if last < first:
        raise ConfigError(f"{what}={spec!r} has the descending range "
                          f"{item!r}; write it as '{last}-{first}'")
      classes.extend(range(first, last + 1))
  else:
    classes = [int(c) for c in spec]
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ConfigError(f"{what}={spec!r} names class {bad[0]}, but the "
                      f"dataset has classes 0-{num_classes - 1}; pick classes "
                      "in that range")
  repeated = sorted({c for c in classes if classes.count(c) > 1})
  if repeated:
    raise ConfigError(f"{what}={spec!r} names class {repeated[0]} more than "
                      "once; list each class once")
  if len(classes) < 2:
    raise ConfigError(f"{what}={spec!r} keeps {len(classes)} of the "
                      f"{num_classes} classes; a classifier needs at least 2")
  return tuple(classes)


def class_subset(split: ArraySplit, classes: Sequence[int]) -> ArraySplit:
  """Only the examples of ``classes``, relabelled ``0..K-1``.

  Class ``classes[i]`` becomes label ``i`` and ``num_classes`` becomes
  ``K = len(classes)``; the kept rows stay in their original order (so the
  embedded splits stay class-mixed). Used for two "datasets" from one, e.g.
  CIFAR-10 classes 0-4 and 5-9 (RWS transfer, docs/rws.md).

  Args:
    split: the full split, labels in ``[0, split.num_classes)``.
    classes: distinct classes of ``split`` (see ``parse_classes``).

  Returns:
    An ``ArraySplit`` with uint8 ``[M, H, W, C]`` images and int32 ``[M]``
    labels in ``[0, K)``.
  """
  classes = parse_classes(list(classes), split.num_classes)
  lookup = np.full(split.num_classes, -1, np.int32)
  lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
  rows = np.nonzero(lookup[split.labels] >= 0)[0]
  return ArraySplit(split.images[rows], lookup[split.labels[rows]],
                    len(classes), split.name)


def num_classes(name: str, classes: str | Sequence[int] | None = "") -> int:
  """The label count a model of dataset ``name`` restricted to ``classes``
  (a ``parse_classes`` selection; empty = all) has; validates both."""
  if name not in DATASETS:
    raise ConfigError(f"unknown dataset {name!r}; choose one of "
                      f"{', '.join(sorted(DATASETS))}")
  total = DATASETS[name].num_classes
  chosen = parse_classes(classes, total)
  return total if chosen is None else len(chosen)


def subset(split: ArraySplit, classes: str | Sequence[int] | None
           ) -> ArraySplit:
  """``split`` restricted to ``classes`` (a ``parse_classes`` selection),
  relabelled ``0..K-1``; unchanged when ``classes`` is empty."""
  chosen = parse_classes(classes, split.num_classes)
  return split if chosen is None else class_subset(split, chosen)


def train_val(name: str, *, source: str = "embedded",
              data_dir: str | None = None,
              classes: str | Sequence[int] | None = "", val_size: int = 0,
              val_seed: int = 0) -> tuple[ArraySplit, ArraySplit | None]:
  """A run's training split and the validation split it holds out.

  The class subset is taken first and the holdout second, so the dataset
  block a checkpoint saves (``name, source, classes, val_size, val_seed``)
  reproduces exactly the rows its training run held out: RiFT selects on
  them, never on rows the model trained on.

  Returns:
    ``(train, val)``: uint8 splits that together cover the (class-subset)
    training split; ``val`` is None when ``val_size`` is 0.
  """
  train = subset(load_split(name, "train", source=source, data_dir=data_dir),
                 classes)
  return holdout_split(train, int(val_size), seed=int(val_seed))

