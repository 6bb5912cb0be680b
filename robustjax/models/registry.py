"""The model registry: names -> factory functions, filled by ``@register``.

Each model module decorates its factories, e.g.::

  @register("resnet18")
  def resnet18(num_classes, width, dtype, mean, std) -> nn.Module: ...

  @register("wrn", options=dict(depth=28, widen=10, activation="relu",
                                padding="torch"))
  def wrn(num_classes, width, dtype, mean, std, **options) -> nn.Module: ...

``options`` are a factory's further keyword arguments with their defaults.
``create_model`` checks the user's arguments (raising a one-line
``ConfigError``) and calls the factory. Importing ``robustjax.models`` imports
every model module, so the registry is complete by the time anyone asks.

The model spec saved with every checkpoint (``model_spec``) holds the name,
width, class count, input mean/std and every option of the model. A key a
spec lacks takes its default (the CIFAR-10 mean/std, the option defaults).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from robustjax.errors import ConfigError
from robustjax.models.layers import (ACTIVATIONS, CIFAR10_MEAN, CIFAR10_STD,
                                     PADDINGS, SHORTCUTS, Dtype)

# factory(num_classes, width, dtype, mean, std, **options) -> an unbound
# flax module.
ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}
_OPTIONS: dict[str, dict[str, Any]] = {}

# The values each model option may take; a check returns an error message
# or None. Options not listed here are positive integers (depth, widen).
_CHOICES: dict[str, tuple[Any, ...]] = {
    "activation": tuple(ACTIVATIONS), "padding": PADDINGS,
    "shortcut": SHORTCUTS, "final_bn": (True, False)}


def register(name: str, options: Mapping[str, Any] | None = None
             ) -> Callable[[ModelFactory], ModelFactory]:
  """Decorator adding a factory to the registry under ``name``.

  ``options``: the factory's further keyword arguments and their defaults
  (saved in every model spec of this model).
  """

  def decorator(factory: ModelFactory) -> ModelFactory:
    # A duplicate is a programming error (two modules claiming one name),
    # not bad user input, so it is not a ConfigError.
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = factory
    _OPTIONS[name] = dict(options or {})
    return factory

  return decorator


def model_options(name: str) -> dict[str, Any]:
  """The options model ``name`` takes, with their defaults ({} for none)."""
  if name not in _REGISTRY:
    raise ConfigError(f"unknown model {name!r}; choose one of: "
                      f"{', '.join(available_models())}")
  return dict(_OPTIONS[name])


def _check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """``options`` over model ``name``'s defaults, each value checked."""
  defaults = model_options(name)
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise ConfigError(
        f"model {name} has no option {', '.join(unknown)}; its options: "
        f"{', '.join(sorted(defaults)) or 'none'}")
  out = dict(defaults, **options)
  for key, value in out.items():
    choices = _CHOICES.get(key)
    if choices is not None:
      if isinstance(value, bool) != isinstance(choices[0], bool) or \
          value not in choices:
        raise ConfigError(f"model option {key}={value!r}; choose one of: "
                          f"{', '.join(map(str, choices))}")
    elif (isinstance(value, bool) or not isinstance(value, numbers.Integral)
          or value < 1):
      raise ConfigError(
          f"model option {key} must be an integer >= 1, got {value!r}")
  if "depth" in out and (out["depth"] < 10 or (out["depth"] - 4) % 6):
    raise ConfigError(f"model {name} depth must be 6n + 4 with n >= 1 "
                      f"(10, 16, 22, 28, 34, ...), got {out['depth']}")
  if out.get("activation") == "swish":
    out["activation"] = "silu"  # one function: keep one name in specs
  return {k: int(v) if k in ("depth", "widen") else v
          for k, v in out.items()}


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
                 std: Sequence[float] = CIFAR10_STD,
                 **options: Any) -> nn.Module:
  """Builds the registered model ``name``.

  Args:
    name: one of ``available_models()``.
    num_classes: the number of logits, at least 2.
    width: multiplies every channel count (rounded, at least 1); > 0.
    dtype: compute dtype of convs and dense layers, a name from
      ``COMPUTE_DTYPES`` or the dtype; parameters and logits stay float32.
    mean, std: per-channel input statistics, applied inside the model
      (``(0, 0, 0)`` / ``(1, 1, 1)``: the model takes raw [0, 1] pixels).
    **options: the model's options (``model_options(name)``), e.g.
      ``activation="silu"``, ``padding="same"``; unset ones take their
      defaults.

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
  options = _check_options(name, options)
  return _REGISTRY[name](int(num_classes), float(width),
                         compute_dtype(dtype), mean, std, **options)


# The keys of a model spec that are not model options.
_SPEC_KEYS = ("name", "width", "num_classes", "mean", "std")


def model_spec(name: str, width: float, num_classes: int, *,
               mean: Sequence[float] = CIFAR10_MEAN,
               std: Sequence[float] = CIFAR10_STD,
               **options: Any) -> dict[str, Any]:
  """What identifies a network, saved with every checkpoint (JSON):
  ``{"name", "width", "num_classes", "mean", "std", **options}`` with every
  option of the model spelled out (its default where not given).

  Raises:
    ConfigError: an unknown model, option or option value.
  """
  return {"name": str(name), "width": float(width),
          "num_classes": int(num_classes),
          "mean": list(_channel_stats(mean, "mean")),
          "std": list(_channel_stats(std, "std")),
          **_check_options(str(name), options)}


def full_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
  """``spec`` with every missing key at its default: the spec that
  ``model_spec`` writes for the same network. Two specs name the same
  network exactly when their full specs are equal; a spec holding only
  name, width and num_classes builds the defaults' network."""
  options = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
  return model_spec(spec["name"], spec["width"], spec["num_classes"],
                    mean=spec.get("mean", CIFAR10_MEAN),
                    std=spec.get("std", CIFAR10_STD), **options)


def build_model(spec: Mapping[str, Any], dtype: str | Dtype = "float32"
                ) -> nn.Module:
  """The network a checkpoint's ``spec`` names, computing in ``dtype``.

  The compute dtype is not part of ``spec``: it does not change the
  parameters, so a checkpoint trained in bfloat16 loads into a float32
  model. Missing keys take their defaults (``full_spec``).
  """
  spec = full_spec(spec)
  options = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
  return create_model(spec["name"], num_classes=spec["num_classes"],
                      width=spec["width"], dtype=dtype, mean=spec["mean"],
                      std=spec["std"], **options)
