"""PyTorch ``state_dict`` <-> robustjax variables, exact to the bit.

``from_torch(state_dict, arch=...)`` returns ``(variables, spec)``: the
``{"params", "batch_stats"}`` pytree and the model spec that
``models.build_model`` turns into the network computing what the PyTorch
class computes. ``to_torch(variables, spec)`` is the way back: a
``state_dict`` the matching class loads with ``strict=True``.

The tensors (only the names differ between layouts, ``archs.py``):

=====================  ==================================================
PyTorch                robustjax
=====================  ==================================================
Conv2d ``weight``      ``kernel``: OIHW -> HWIO
Linear ``weight``      ``kernel``: transposed; ``bias`` as is
BatchNorm2d            ``weight`` -> ``scale``, ``bias`` -> ``bias``;
                       ``running_mean`` / ``running_var`` ->
                       ``batch_stats`` ``mean`` / ``var``;
                       ``num_batches_tracked`` dropped (written as 0:
                       PyTorch reads it only with ``momentum=None``,
                       which no converted class uses)
``mu``, ``sigma``      the spec's ``mean`` / ``std`` (RobustBench
                       subclasses that normalise inside keep them)
=====================  ==================================================

Values are copied, never recomputed, so a round trip returns the same bits.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

import jax
import numpy as np

from robustjax import models
from robustjax.errors import ConfigError
from robustjax.interop import archs
from robustjax.interop.archs import RAW, TorchArch

Variables = dict[str, Any]  # {"params", "batch_stats"}

# Wrappers that prefix every key: DataParallel's ``module.`` and the
# ``model.`` of wrappers that hold the network as ``self.model``.
PREFIXES = ("module.", "model.")
# Keys of the TRADES WideResNet's unused second copy of its first stage.
SUB_BLOCK1 = "sub_block1."
BUFFERS = ("mu", "sigma")
# How many mismatches a fit error lists per kind.
_SHOWN = 3


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any device; bfloat16/float16 become float32) or an
  array-like -> a numpy array."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype.itemsize < 4:
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """``state_dict`` with leading ``module.`` / ``model.`` removed from each
  key that starts with one (repeatedly: ``module.model.conv1.weight`` ->
  ``conv1.weight``). A prefix elsewhere in a key is part of its name and
  stays."""
  out = {}
  for key, value in state_dict.items():
    while key.startswith(PREFIXES):
      key = key.split(".", 1)[1]
    if key in out:
      raise ConfigError(f"the state_dict holds {key} twice (with and without "
                        "a module./model. prefix); keep one copy")
    out[key] = value
  return out


def _modules(tree: Mapping[str, Any], prefix: str = ""
             ) -> dict[str, dict[str, Any]]:
  """A nested variables dict -> {module path: {leaf name: leaf}}, in the
  tree's order."""
  out: dict[str, dict[str, Any]] = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    if isinstance(value, Mapping):
      out.update(_modules(value, path))
    else:
      out.setdefault(prefix, {})[key] = value
  return out


def _torch_entries(variables: Mapping[str, Any], arch: TorchArch
                   ) -> list[tuple[str, str, str, str, str]]:
  """Every PyTorch tensor of ``variables`` as ``(torch key, collection,
  module path, leaf, kind)``; kind: ``conv``, ``linear``, ``copy`` (as is)
  or ``count`` (``num_batches_tracked``), in the tree's order."""
  params = _modules(variables["params"])
  stats = _modules(variables.get("batch_stats", {}))
  entries = []
  for path, leaves in params.items():
    try:
      name = arch.names(path)
    except KeyError:
      raise ConfigError(f"module {path} has no counterpart in the PyTorch "
                        f"class of {arch.name}") from None
    if "scale" in leaves:  # BatchNorm
      entries += [(f"{name}.weight", "params", path, "scale", "copy"),
                  (f"{name}.bias", "params", path, "bias", "copy")]
      if path in stats:
        entries += [
            (f"{name}.running_mean", "batch_stats", path, "mean", "copy"),
            (f"{name}.running_var", "batch_stats", path, "var", "copy"),
            (f"{name}.num_batches_tracked", "", path, "", "count")]
      continue
    kind = "conv" if len(np.shape(leaves["kernel"])) == 4 else "linear"
    entries.append((f"{name}.weight", "params", path, "kernel", kind))
    if "bias" in leaves:
      entries.append((f"{name}.bias", "params", path, "bias", "copy"))
  return entries


# Axis orders between layouts: conv kernels HWIO (robustjax) and OIHW
# (PyTorch); dense kernels are transposed either way.
_TO_TORCH = {"conv": (3, 2, 0, 1), "linear": (1, 0)}
_FROM_TORCH = {"conv": (2, 3, 1, 0), "linear": (1, 0)}


def _relayout(value: np.ndarray, kind: str,
              axes: Mapping[str, tuple[int, ...]]) -> np.ndarray:
  """``value`` with its axes in the other layout (``copy`` kinds as is)."""
  if kind in axes:
    return np.ascontiguousarray(np.transpose(value, axes[kind]))
  return value


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  if kind in _TO_TORCH:
    return tuple(shape[i] for i in _TO_TORCH[kind])
  return tuple(shape)


def _ordered_shapes(tree: Any) -> Any:
  """A traced variables tree -> the same nesting of ShapeDtypeStructs,
  keeping its dicts' order (``jax.tree.map`` would sort the keys)."""
  if isinstance(tree, Mapping):
    return {k: _ordered_shapes(v) for k, v in tree.items()}
  return jax.ShapeDtypeStruct(tree.shape, tree.dtype)


def expected_variables(spec: Mapping[str, Any]) -> dict[str, Any]:
  """The variables of ``spec``'s network as ShapeDtypeStructs, modules in
  the order the network creates them (its depth order), computed
  abstractly for 32x32 inputs (the parameter shapes do not depend on the
  input size)."""
  model = models.build_model(spec)
  captured: dict[str, Any] = {}

  def init():
    # Read inside the trace: the tree JAX returns has its keys sorted.
    captured["tree"] = _ordered_shapes(model.init(
        jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)), train=False))
    return 0

  jax.eval_shape(init)
  return captured["tree"]


def _leaf(variables: Mapping[str, Any], collection: str, path: str,
          leaf: str) -> Any:
  node = variables[collection]
  for part in path.split("/"):
    node = node[part]
  return node[leaf]


def _check_fit(arch: TorchArch, spec: Mapping[str, Any],
               entries: list[tuple[str, str, str, str, str]],
               expected: Mapping[str, Any],
               state_dict: Mapping[str, np.ndarray]) -> None:
  """ConfigError listing the first missing, unexpected and misshapen keys
  of ``state_dict`` against the class ``arch`` of ``spec``."""
  want = {key: (_torch_shape(_leaf(expected, col, path, leaf).shape, kind)
                if kind != "count" else None)
          for key, col, path, leaf, kind in entries}
  missing = [k for k in want if k not in state_dict
             and not k.endswith(".num_batches_tracked")]
  unexpected = [k for k in state_dict if k not in want]
  shapes = [f"{k} {tuple(np.shape(state_dict[k]))} (expects {want[k]})"
            for k in want if k in state_dict and want[k] is not None
            and tuple(np.shape(state_dict[k])) != want[k]]
  if not (missing or unexpected or shapes):
    return
  parts = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch", shapes)):
    if items:
      more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
      parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
  options = {k: spec[k] for k in ("depth", "widen", "num_classes")
             if k in spec}
  raise ConfigError(
      f"the state_dict does not fit {arch.name} {options}: "
      f"{'; '.join(parts)}; check the architecture name and its options")


def _channel_buffer(value: Any, name: str) -> tuple[float, ...]:
  flat = to_numpy(value).reshape(-1)
  if flat.size != 3:
    raise ConfigError(f"the state_dict's {name} holds {flat.size} values; "
                      "expected 3 (one per RGB channel)")
  return tuple(float(v) for v in flat)


def from_torch(state_dict: Mapping[str, Any], arch: str, *,
               num_classes: int | None = None,
               mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None,
               **options: Any) -> tuple[Variables, dict[str, Any]]:
  """Converts a PyTorch ``state_dict`` of class ``arch`` to robustjax.

  Args:
    state_dict: key -> torch tensor or array (``module.``/``model.``
      prefixes are stripped; a TRADES WideResNet's ``sub_block1.*`` copy is
      dropped: its forward pass never uses it).
    arch: a name of ``archs.ARCHS`` (``wide_resnet``, ``dm_wide_resnet``,
      ``dm_preact_resnet18``, ``resnet18``, ``preact_resnet18``,
      ``preact_resnet18_v2``).
    num_classes: default: read off the head's weight.
    mean, std: the input normalisation (3 numbers each) the class applies
      when the checkpoint carries no ``mu``/``sigma`` buffers; default: the
      class's own (none for the TRADES WideResNet and the ResNets, the
      CIFAR-10 statistics for DeepMind's classes). Buffers in the
      checkpoint take precedence, as when PyTorch loads them.
    **options: the class's free options (``archs.ARCHS[arch].free``):
      ``depth``, ``widen`` (default: read off the keys) and, for DeepMind's
      classes, ``activation`` (``relu``, ``swish``, ``silu``).

  Returns:
    ``(variables, spec)``: ``{"params", "batch_stats"}`` of float32 numpy
    arrays (conv kernels HWIO [kh, kw, C_in, C_out], dense kernels
    [C_in, num_classes]) and the full model spec.

  Raises:
    ConfigError: an unknown architecture or option, or a state_dict whose
      keys or shapes do not fit (the first mismatches listed).
  """
  torch_arch = archs.get(arch)
  unknown = sorted(set(options) - set(torch_arch.free))
  if unknown:
    raise ConfigError(
        f"architecture {arch} has no option {', '.join(unknown)}; its "
        f"options: {', '.join(sorted(torch_arch.free)) or 'none'} (and "
        "num_classes, mean, std)")
  sd = {k: to_numpy(v) for k, v in strip_prefixes(state_dict).items()
        if not (torch_arch.name == "wide_resnet" and k.startswith(SUB_BLOCK1))}
  if torch_arch.buffers and all(b in sd for b in BUFFERS):
    mean = _channel_buffer(sd.pop("mu"), "mu")
    std = _channel_buffer(sd.pop("sigma"), "sigma")
  inferred = torch_arch.infer(sd)
  chosen = {k: options.get(k, inferred.get(k, default))
            for k, default in torch_arch.free.items()}
  num_classes = num_classes or inferred.get("num_classes", 10)
  spec = models.model_spec(
      torch_arch.model, 1.0, num_classes,
      mean=torch_arch.mean if mean is None else mean,
      std=torch_arch.std if std is None else std,
      **torch_arch.fixed, **chosen)
  expected = expected_variables(spec)
  entries = _torch_entries(expected, torch_arch)
  _check_fit(torch_arch, spec, entries, expected, sd)
  variables: Variables = {"params": {}, "batch_stats": {}}
  for key, collection, path, leaf, kind in entries:
    if kind == "count":
      continue
    node = variables[collection]
    for part in path.split("/"):
      node = node.setdefault(part, {})
    node[leaf] = _relayout(sd[key], kind, _FROM_TORCH).astype(np.float32)
  return variables, spec


def to_torch(variables: Mapping[str, Any], spec: Mapping[str, Any], *,
             arch: str | None = None, sub_block1: bool = False,
             mu_sigma: bool | None = None) -> "collections.OrderedDict":
  """Converts robustjax variables to the ``state_dict`` of a PyTorch class.

  Args:
    variables: ``{"params", "batch_stats"}`` of the model ``spec`` names.
    spec: the model spec (``checkpoint.load(...)["meta"]["model"]``).
    arch: the PyTorch layout (a name of ``archs.ARCHS``); default: the one
      whose class computes ``spec``'s network (``archs.arch_of``).
    sub_block1: also write the ``sub_block1.*`` copy of the first stage
      that ``WideResNet(..., sub_block1=True)`` declares (and never uses).
    mu_sigma: write the input normalisation as ``mu``/``sigma`` buffers
      [1, 3, 1, 1], as RobustBench's normalising subclasses expect; default:
      when the layout stores them and the model normalises.

  Returns:
    An ordered ``{key: torch.Tensor}`` (float32; ``num_batches_tracked``
    int64 0) that the class loads with ``load_state_dict(strict=True)``.

  Raises:
    ConfigError: a spec no PyTorch class computes, an ``arch`` that does
      not compute it, or no PyTorch installed.
  """
  try:
    import torch  # local: PyTorch is needed for export only
  except ImportError:
    raise ConfigError("exporting to PyTorch needs the torch package; "
                      "pip install torch") from None
  full = models.full_spec(spec)
  torch_arch = archs.get(arch) if arch else archs.arch_of(full)
  if archs.arch_of(full).name != torch_arch.name:
    raise ConfigError(
        f"model spec {full} is not what {torch_arch.name} computes; export "
        f"it as {archs.arch_of(full).name}")
  if sub_block1 and torch_arch.name != "wide_resnet":
    raise ConfigError("sub_block1 belongs to the wide_resnet layout only")
  out: collections.OrderedDict = collections.OrderedDict()
  if mu_sigma is None:
    mu_sigma = torch_arch.buffers and (tuple(full["mean"]), tuple(
        full["std"])) != RAW
  if mu_sigma:
    if not torch_arch.buffers:
      raise ConfigError(f"the {torch_arch.name} layout keeps mean/std out of "
                        "its state_dict (pass them to the class instead)")
    for name, value in (("mu", full["mean"]), ("sigma", full["std"])):
      out[name] = torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1)
  expected = expected_variables(full)
  for key, collection, path, leaf, kind in _torch_entries(expected,
                                                          torch_arch):
    if kind == "count":
      out[key] = torch.tensor(0, dtype=torch.int64)
      continue
    try:
      value = np.asarray(_leaf(variables, collection, path, leaf),
                         np.float32)
    except KeyError:
      raise ConfigError(f"the variables have no {collection}/{path}/{leaf}, "
                        f"which model {full['name']} has") from None
    want = _leaf(expected, collection, path, leaf).shape
    if value.shape != want:
      raise ConfigError(f"{collection}/{path}/{leaf} is {value.shape} but "
                        f"model {full['name']} expects {want}")
    out[key] = torch.from_numpy(_relayout(value, kind, _TO_TORCH).copy())
  if sub_block1:
    for key in [k for k in out if k.startswith("block1.")]:
      out[SUB_BLOCK1 + key[len("block1."):]] = out[key].clone()
  return out
