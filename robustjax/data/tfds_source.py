"""TensorFlow Datasets as a source: whole splits as numpy arrays.

``tensorflow_datasets`` is imported inside the function: it pulls in
TensorFlow, which takes seconds to import and is not needed for the embedded
source. TensorFlow and TFDS are an optional extra (``requirements-tfds.txt``,
``pip install 'robustjax[tfds]'``); without them a TFDS source is refused with
one line. TFDS keeps its own (original CIFAR index) order, which is already
class-mixed.

A dataset that is not prepared in ``data_dir`` is downloaded by TFDS, which
retries for minutes when the network is unreachable; ``load_tfds_builder``
reads prepared data without the network and, when there is none, checks
that a download host answers before TFDS downloads, failing at once with
how to prepare the data otherwise.
"""

from __future__ import annotations

import os
import socket

import numpy as np

from robustjax.errors import ConfigError

_CHUNK = 4096  # examples per tf.data batch while copying a split to numpy

# Our dataset name -> TFDS builder name.
TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100",
              "svhn": "svhn_cropped"}
# Where TFDS downloads from: its Google Cloud Storage mirror first.
_DOWNLOAD_HOSTS = ("storage.googleapis.com", "www.cs.toronto.edu")
_PROBE_TIMEOUT_S = 3.0


def network_reachable() -> bool:
  """Whether a TFDS download host accepts a connection within seconds
  (always True behind an HTTP(S) proxy, which a direct probe cannot judge)."""
  if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY",
                                     "http_proxy", "HTTP_PROXY")):
    return True
  for host in _DOWNLOAD_HOSTS:
    try:
      socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
      return True
    except OSError:
      continue
  return False


def load_tfds(name: str, split: str,
              data_dir: str | os.PathLike | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole TFDS split into memory.

  Args:
    name: our dataset name, a key of ``TFDS_NAMES``.
    split: ``'train'`` or ``'test'``.
    data_dir: the TFDS data folder (None: TFDS's default, ``~/tensorflow_datasets``).

  Returns:
    ``(images, labels)``: uint8 ``[N, H, W, 3]`` and int32 ``[N]``.

  Raises:
    ConfigError: TFDS is missing, or the data cannot be found or prepared.
  """
  return load_tfds_builder(TFDS_NAMES[name], split, data_dir)


def load_tfds_builder(tfds_name: str, split: str,
                      data_dir: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
  """``load_tfds`` by TFDS builder name (with config, e.g.
  ``cifar10_corrupted/fog_3``)."""
  try:
    import tensorflow  # noqa: F401  lazy: seconds to import
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ConfigError(
        f"source='tfds' needs TensorFlow and TensorFlow Datasets, an optional "
        f"extra that is not installed ({e}); install it with `pip install -r "
        f"requirements-tfds.txt`, or use source='embedded' for cifar10"
    ) from None

  data_dir = os.fspath(data_dir) if data_dir is not None else None

  def load(download: bool) -> list:
    ds = tfds.load(tfds_name, split=split, data_dir=data_dir,
                   as_supervised=True, shuffle_files=False, download=download)
    # Fixed-size chunks rather than batch_size=-1: under
    # tfds.testing.mock_data that path aborted the whole process (C++
    # std::length_error in get_single_element), which no except can catch.
    return list(tfds.as_numpy(ds.batch(_CHUNK)))

  try:
    try:
      chunks = load(download=False)  # prepared data needs no network
    except Exception:  # noqa: BLE001 - not prepared, among others
      if not network_reachable():
        where = data_dir or "~/tensorflow_datasets"
        raise ConfigError(
            f"TFDS dataset {tfds_name!r} is not prepared in {where} and the "
            f"network is unreachable, so TFDS cannot download it; prepare it "
            f"on a machine with network (`tfds build {tfds_name} "
            f"--data_dir=DIR`), copy DIR here and pass "
            f"--config.dataset.data_dir=DIR, or use source='embedded' for "
            f"cifar10") from None
      chunks = load(download=True)
  except ConfigError:
    raise
  except Exception as e:  # TFDS raises many types (network, not-found, TF)
    detail = " ".join(str(e).split())[:200]
    raise ConfigError(
        f"could not load TFDS dataset {tfds_name!r} split {split!r} with "
        f"data_dir={data_dir!r} ({type(e).__name__}: {detail}); prepare it "
        f"there first (`tfds build {tfds_name} --data_dir=DIR`) and pass "
        f"data_dir=DIR, or use source='embedded' for cifar10") from e
  if not chunks:
    raise ConfigError(
        f"TFDS dataset {tfds_name!r} split {split!r} with data_dir="
        f"{data_dir!r} is empty; rebuild it (`tfds build {tfds_name} "
        f"--data_dir=DIR`)")
  images = np.concatenate([c[0] for c in chunks]).astype(np.uint8, copy=False)
  labels = np.concatenate([c[1] for c in chunks]).astype(np.int32)
  return images, labels
