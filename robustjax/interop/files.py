"""Reading and writing PyTorch checkpoint files safely.

``read_state_dict(path)`` opens a ``.pt``/``.pth`` file with
``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only: a file that needs arbitrary Python objects (whose
unpickling can run code) is refused unless the caller opts in. A
``.safetensors`` file is read with the safetensors package when installed.
The weights may sit at the top level or under ``state_dict``, ``last`` or
``model_state_dict`` (the layouts RobustBench's checkpoints use).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import numpy as np

from robustjax.errors import ConfigError
from robustjax.interop.convert import to_numpy

SAFETENSORS_SUFFIX = ".safetensors"
# Where a checkpoint dict keeps its weights, looked up in this order.
WEIGHT_KEYS = ("state_dict", "last", "model_state_dict")


def _import_torch(what: str) -> Any:
  try:
    import torch  # local: PyTorch is needed for .pt files only
  except ImportError:
    raise ConfigError(f"{what} needs the torch package (CPU build is "
                      "enough); pip install torch") from None
  return torch


def _short(err: BaseException) -> str:
  """The first line of an exception's message, for one-line errors."""
  text = str(err).strip().splitlines()
  return (text[0][:160] if text else type(err).__name__)


def _torch_load(path: str, allow_pickle: bool, opt_in: str) -> Any:
  torch = _import_torch(f"reading {path}")
  try:
    return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except pickle.UnpicklingError as err:
    if "Unsupported global" in str(err):
      raise ConfigError(
          f"{path} holds pickled Python objects besides tensors; loading them "
          "(torch.load weights_only=False) can run code from the file: if "
          f"you trust it, opt in with {opt_in}") from None
    raise ConfigError(f"{path} is not a PyTorch checkpoint ({_short(err)})"
                      ) from None
  except (RuntimeError, EOFError) as err:
    raise ConfigError(f"cannot read {path}: the file is truncated or "
                      f"corrupt ({_short(err) or 'unexpected end of file'})"
                      ) from None
  except Exception as err:  # noqa: BLE001 - any unpickling failure
    raise ConfigError(f"{path} is not a PyTorch checkpoint "
                      f"({type(err).__name__}: {_short(err)})") from None


def _read_safetensors(path: str) -> dict[str, Any]:
  try:
    from safetensors.numpy import load_file  # optional dependency
  except ImportError:
    raise ConfigError(f"reading {path} needs the safetensors package; pip "
                      "install safetensors, or save it with torch.save"
                      ) from None
  try:
    return dict(load_file(path))
  except Exception as err:  # noqa: BLE001 - safetensors' own error types
    raise ConfigError(f"{path} is not a readable safetensors file "
                      f"({_short(err)})") from None


def find_weights(obj: Any) -> dict[str, Any]:
  """The ``{key: tensor}`` inside a loaded checkpoint: the object itself,
  its ``state_dict``/``last``/``model_state_dict`` entry, or a whole
  module's ``state_dict()``; entries that are not tensors are left out."""
  if hasattr(obj, "state_dict") and callable(obj.state_dict):
    obj = obj.state_dict()
  if isinstance(obj, Mapping):
    for key in WEIGHT_KEYS:
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping):
    return {}
  return {str(k): v for k, v in obj.items()
          if hasattr(v, "detach") or isinstance(v, np.ndarray)}


def read_state_dict(path: str, *, allow_pickle: bool = False,
                    opt_in: str = "allow_pickle=True"
                    ) -> dict[str, np.ndarray]:
  """The weights in the checkpoint file ``path``, as numpy arrays.

  Args:
    path: a ``.pt``/``.pth`` (any other suffix is read the same way) or
      ``.safetensors`` file.
    allow_pickle: load with ``torch.load(weights_only=False)``, which
      unpickles arbitrary objects (and can run code): for trusted files
      that hold more than tensors.
    opt_in: how the caller spells the opt-in, for the refusal message.

  Returns:
    key -> array (float16/bfloat16 tensors become float32); keys as saved
    (prefixes are stripped by ``convert.from_torch``).

  Raises:
    ConfigError: a missing file, one that is not a checkpoint, a truncated
      one, one that needs unpickling without ``allow_pickle``, or one that
      holds no tensors.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"no checkpoint file at {path}")
  if path.endswith(SAFETENSORS_SUFFIX):
    weights = _read_safetensors(path)
  else:
    weights = find_weights(_torch_load(path, allow_pickle, opt_in))
  if not weights:
    raise ConfigError(
        f"{path} holds no tensors at its top level or under "
        f"{', '.join(WEIGHT_KEYS)}; is it a model checkpoint?")
  return {k: to_numpy(v) for k, v in weights.items()}


def write_state_dict(state_dict: Mapping[str, Any], path: str) -> None:
  """Writes ``state_dict`` ({key: torch.Tensor}) to ``path``: ``torch.save``
  for ``.pt``/``.pth``, safetensors for ``.safetensors``.

  Raises:
    ConfigError: another suffix, or the package the format needs missing.
  """
  if path.endswith(SAFETENSORS_SUFFIX):
    try:
      from safetensors.torch import save_file  # optional dependency
    except ImportError:
      raise ConfigError(f"writing {path} needs the safetensors package; pip "
                        "install safetensors, or name a .pt file") from None
    save_file(dict(state_dict), path)
    return
  if not path.endswith((".pt", ".pth")):
    raise ConfigError(f"output {path}: name a .pt, .pth or .safetensors file")
  _import_torch(f"writing {path}").save(dict(state_dict), path)
