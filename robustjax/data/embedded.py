"""The embedded CIFAR-10 JPEG copy: decode once, cache as ``.npz``, fixed order.

The archives ``<data_dir>/{train,test}.tar.gz`` hold an ImageFolder layout,
``<split>/<class name>/<index>.jpg`` (JPEG quality 75, so a mild distribution
shift from the PNG-exact original; numbers are comparable with each other, not
digit-for-digit with papers). Class index = position in ``CLASS_NAMES``, the
standard CIFAR-10 (and TFDS ``cifar10``) order.

Order. The archives are sorted by class, and the original CIFAR-10 index order
is lost. Keeping archive order would make "the first N test points" (the
RobustBench protocol) a single class. So every split is presented in ONE fixed,
class-mixed order, built when the archive is decoded:

  1. members are sorted by (class index, file name), which makes the order
     independent of how the tar file happens to be laid out;
  2. that sorted list is permuted by
     ``np.random.default_rng(ORDER_SEED).permutation(n)`` with
     ``ORDER_SEED = 20100`` (the same seed for train and test).

Changing the seed or the recipe changes which points are "the first N", so both
are part of the cache file name (``FORMAT_VERSION``) and must not be edited
casually.

Cache. The decoded split is saved with ``np.savez`` (never pickle) as
``<cache_dir>/cifar10-jpeg-<split>-v<FORMAT_VERSION>-<archive sha256[:16]>.npz``
and written atomically (temporary file + ``os.replace``), so concurrent test
workers or an interrupted run never leave a half-written cache behind. The
archive hash in the name means a changed archive is never served stale data.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from robustjax.errors import ConfigError

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
               "horse", "ship", "truck")
ORDER_SEED = 20100
FORMAT_VERSION = 1
IMAGE_SHAPE = (32, 32, 3)
# Sizes of the shipped archives; checked by the tests, not enforced here, so a
# user-supplied subset in the same layout still loads.
EXPECTED_SIZES = {"train": 50_000, "test": 10_000}

# <repo>/robustjax/data/embedded.py -> <repo>
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT / "data" / "cifar10-jpeg"
DEFAULT_CACHE_DIR = _REPO_ROOT / "data" / "cache"

_log = logging.getLogger(__name__)


def load_cifar10_jpeg(
    split: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of the embedded CIFAR-10 copy, in the fixed order.

  Args:
    split: ``'train'`` or ``'test'``.
    data_dir: folder holding ``<split>.tar.gz``; defaults to
      ``<repo>/data/cifar10-jpeg``.
    cache_dir: folder for the decoded ``.npz``; defaults to
      ``<repo>/data/cache``.

  Returns:
    ``(images, labels)``: uint8 ``[N, 32, 32, 3]`` and int32 ``[N]``.

  Raises:
    ConfigError: the folder or archive is missing, or its layout is wrong.
  """
  data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
  cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
  if not data_dir.is_dir():
    raise ConfigError(
        f"CIFAR-10 JPEG data folder {str(data_dir)!r} does not exist; pass "
        f"data_dir=<folder with train.tar.gz and test.tar.gz> or use "
        f"source='tfds'")
  archive = data_dir / f"{split}.tar.gz"
  if not archive.is_file():
    raise ConfigError(
        f"CIFAR-10 JPEG archive {str(archive)!r} is missing; restore it "
        f"(git checkout data/cifar10-jpeg) or pass data_dir=<folder with {split}.tar.gz>")

  cache_path = cache_dir / (
      f"cifar10-jpeg-{split}-v{FORMAT_VERSION}-{_sha256(archive)[:16]}.npz")
  cached = _read_cache(cache_path)
  if cached is not None:
    return cached
  images, labels = decode_archive(archive, split)
  _write_cache(cache_path, images, labels)
  return images, labels


def decode_archive(archive: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every JPEG of ``archive`` in one pass and applies the fixed order.

  Returns uint8 ``[N, 32, 32, 3]`` images and int32 ``[N]`` labels.
  """
  entries = []  # (label, file name, pixels)
  # One sequential pass: a gzip stream cannot seek, so random member access
  # would decompress the archive again for every file.
  with tarfile.open(archive, "r:gz") as tar:
    for member in tar:
      if not member.isfile() or not member.name.lower().endswith(".jpg"):
        continue
      parts = Path(member.name).parts
      if len(parts) < 3 or parts[-3] != split:
        raise ConfigError(
            f"unexpected member {member.name!r} in {str(archive)!r}; expected "
            f"the layout {split}/<class name>/<index>.jpg")
      class_name = parts[-2]
      if class_name not in CLASS_NAMES:
        raise ConfigError(
            f"unknown class folder {class_name!r} in {str(archive)!r}; "
            f"expected one of {', '.join(CLASS_NAMES)}")
      data = tar.extractfile(member).read()
      with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
      if pixels.shape != IMAGE_SHAPE:
        raise ConfigError(
            f"image {member.name!r} in {str(archive)!r} has shape "
            f"{pixels.shape}, expected {IMAGE_SHAPE}")
      entries.append((CLASS_NAMES.index(class_name), parts[-1], pixels))
  if not entries:
    raise ConfigError(f"no JPEG images found in {str(archive)!r}")

  entries.sort(key=lambda e: (e[0], e[1]))
  order = np.random.default_rng(ORDER_SEED).permutation(len(entries))
  images = np.stack([entries[i][2] for i in order])
  labels = np.asarray([entries[i][0] for i in order], dtype=np.int32)
  return images, labels


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
  """The cached arrays, or None if absent or unreadable (then we re-decode)."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      images, labels = f["images"], f["labels"]
  except Exception as e:  # a damaged cache is only a slower start
    _log.warning("ignoring unreadable cache %s: %s", path, e)
    return None
  if (images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE
      or labels.dtype != np.int32 or labels.shape != images.shape[:1]):
    _log.warning("ignoring cache %s with unexpected contents", path)
    return None
  return images, labels


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the ``.npz`` atomically; a read-only cache folder only warns."""
  tmp_name = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target, so os.replace is a rename, not a copy.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name,
                                     suffix=".tmp", delete=False) as f:
      tmp_name = f.name
      np.savez(f, images=images, labels=labels)
    # NamedTemporaryFile creates 0600; a cache is as shareable as the data.
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, path)
    tmp_name = None
  except OSError as e:
    _log.warning("could not write cache %s (%s); data will be decoded again "
                 "next time", path, e)
  finally:
    if tmp_name is not None and os.path.exists(tmp_name):
      os.remove(tmp_name)
