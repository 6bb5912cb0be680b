"""The model registry: names -> factory functions, filled by ``@register``.

Each model module decorates its factories, e.g.::

  @register("resnet18")
  def resnet18(num_classes, width, dtype, mean, std) -> nn.Module: ...

``create_model`` checks the user's arguments (raising a one-line
``ConfigError``) and calls the factory. Importing ``robustjax.models`` imports
every model module, so the registry is complete by the time anyone asks.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from robustjax.errors import ConfigError
from robustjax.models.layers import CIFAR10_MEAN, CIFAR10_STD, Dtype

# factory(num_classes, width, dtype, mean, std) -> an unbound flax module.
ModelFactory = Callable[[int, float, Dtype, tuple, tuple], nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
  """Decorator adding a factory to the registry under ``name``."""

  def decorator(factory: ModelFactory) -> ModelFactory:
    # A duplicate is a programming error (two modules claiming one name),
    # not bad user input, so it is not a ConfigError.
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory

  return decorator


def available_models() -> list[str]:
  """The registered model names, sorted."""
  return sorted(_REGISTRY)


def _channel_stats(value: Sequence[float], what: str) -> tuple[float, ...]:
  """``value`` as a tuple of 3 floats (flax module fields must be hashable)."""
  try:
    stats = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(
        f"model {what} must be 3 numbers, got {value!r}") from None
  if len(stats) != 3:
    raise ConfigError(f"model {what} must be 3 numbers (RGB), got {value!r}")
  return stats


# Compute dtypes a config may name. float16 is left out on purpose: without
# loss scaling its 5-bit exponent underflows small gradients, while bfloat16
# keeps float32's range (docs/design.md).
COMPUTE_DTYPES: dict[str, Dtype] = {"float32": jnp.float32,
                                    "bfloat16": jnp.bfloat16}


def compute_dtype(dtype: str | Dtype) -> Dtype:
  """``"float32"``/``"bfloat16"`` (or the dtype itself) -> the JAX dtype.

  Raises:
    ConfigError: any other name, e.g. ``"float16"``.
  """
  if not isinstance(dtype, str):
    dtype = jnp.dtype(dtype).name
  if dtype not in COMPUTE_DTYPES:
    raise ConfigError(
        f"model dtype {dtype!r} is not supported; use one of "
        f"{', '.join(COMPUTE_DTYPES)} (bfloat16 = mixed precision: bfloat16 "
        "compute, float32 parameters, optimizer state, logits and loss)")
  return COMPUTE_DTYPES[dtype]


def create_model(name: str, *, num_classes: int = 10, width: float = 1.0,
                 dtype: str | Dtype = jnp.float32,
                 mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD) -> nn.Module:
  """Builds the registered model ``name``.

  Args:
    name: one of ``available_models()``.
    num_classes: the number of logits, at least 2.
    width: multiplies every channel count (rounded, at least 1); > 0.
    dtype: compute dtype of convs and dense layers, a name from
      ``COMPUTE_DTYPES`` or the dtype; parameters and logits stay float32.
    mean, std: per-channel input statistics, applied inside the model.

  Returns:
    A flax module taking x [B, H, W, 3] in [0, 1] and ``train: bool``,
    returning float32 logits [B, num_classes].

  Raises:
    ConfigError: unknown name or out-of-range argument.
  """
  if name not in _REGISTRY:
    raise ConfigError(f"unknown model {name!r}; choose one of: "
                      f"{', '.join(available_models())}")
  if (isinstance(num_classes, bool)
      or not isinstance(num_classes, numbers.Integral) or num_classes < 2):
    raise ConfigError(
        f"num_classes must be an integer >= 2, got {num_classes!r}")
  if (isinstance(width, bool) or not isinstance(width, numbers.Real)
      or not (width > 0 and math.isfinite(width))):
    raise ConfigError(
        f"model width must be a finite number > 0, got {width!r}")
  mean = _channel_stats(mean, "mean")
  std = _channel_stats(std, "std")
  if not all(s > 0 for s in std):
    raise ConfigError(f"model std must be > 0 per channel, got {std!r}")
  return _REGISTRY[name](int(num_classes), float(width),
                         compute_dtype(dtype), mean, std)


def model_spec(name: str, width: float, num_classes: int) -> dict[str, Any]:
  """What identifies a network, saved with every checkpoint:
  ``{"name", "width", "num_classes"}``."""
  return {"name": str(name), "width": float(width),
          "num_classes": int(num_classes)}


def build_model(spec: Mapping[str, Any], dtype: str | Dtype = "float32"
                ) -> nn.Module:
  """The network a checkpoint's ``spec`` names, computing in ``dtype``.

  The compute dtype is not part of ``spec``: it does not change the
  parameters, so a checkpoint trained in bfloat16 loads into a float32
  model.
  """
  return create_model(spec["name"], num_classes=spec["num_classes"],
                      width=spec["width"], dtype=dtype)
