"""The PyTorch architectures robustjax converts, and how their names map.

Each ``TorchArch`` is one PyTorch model class layout as RobustBench's model
zoo defines it: the robustjax model (and fixed options) that computes the
same function, the options a user may set, how the class names a module,
and how its depth, widen factor and class count are read off a
``state_dict``.

The name mapping works on robustjax module paths (``stage2/block0/conv1``)
and is the whole difference between the layouts; the tensor layout (conv
OIHW <-> HWIO, Linear transposed, BatchNorm weight/bias/running statistics
<-> scale/bias/mean/var) is shared (``convert.py``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from robustjax.errors import ConfigError
from robustjax.models import CIFAR10_MEAN, CIFAR10_STD

RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean/std of a raw-[0, 1] model

# A robustjax module path -> its (stage, block, layer) when inside a stage.
_BLOCK = re.compile(r"^stage(\d+)/block(\d+)/(.+)$")


@dataclasses.dataclass(frozen=True)
class TorchArch:
  """One PyTorch model layout.

  name: the architecture name ``from_torch`` takes.
  torch_class: how RobustBench constructs it (for docs and messages).
  model: the robustjax model name; fixed: its options this class fixes.
  free: the options a user may set, with the class's defaults.
  mean, std: the class's input normalisation when the checkpoint carries
    none (RAW: none, the class takes [0, 1] pixels).
  names: robustjax module path -> the class's module name (dotted).
  infer: ``state_dict`` -> the options read off it (depth, widen,
    num_classes).
  buffers: whether ``mu``/``sigma`` buffers belong to the state_dict when
    the model normalises (RobustBench subclasses store them; DeepMind's
    classes keep mean/std out of the state_dict).
  """
  name: str
  torch_class: str
  model: str
  fixed: Mapping[str, Any]
  free: Mapping[str, Any]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  names: Callable[[str], str]
  infer: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]
  buffers: bool


def _num_classes(state_dict: Mapping[str, np.ndarray], head: str) -> dict:
  weight = state_dict.get(f"{head}.weight")
  return {} if weight is None else {"num_classes": int(weight.shape[0])}


def _blocks(state_dict: Mapping[str, np.ndarray], pattern: str) -> int:
  """How many blocks of the first stage ``pattern`` (a regex with one group:
  the block index) finds among the keys."""
  found = {int(m.group(1)) for m in map(re.compile(pattern).match,
                                        state_dict) if m}
  return max(found) + 1 if found else 0


def _wrn_infer(stage1: str, head: str) -> Callable[..., dict[str, Any]]:
  """Depth, widen and class count of a WideResNet state_dict whose first
  stage's blocks are ``stage1`` + ``.{j}.`` and whose head is ``head``."""

  def infer(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out = _num_classes(state_dict, head)
    n = _blocks(state_dict, re.escape(stage1) + r"\.(\d+)\.")
    if n:
      out["depth"] = 6 * n + 4
    weight = state_dict.get(f"{head}.weight")
    if weight is not None and weight.shape[1] % 64 == 0:
      out["widen"] = int(weight.shape[1]) // 64  # 64 x widen features
    return out

  return infer


def _renamer(block: str, layers: Mapping[str, str], top: Mapping[str, str]
             ) -> Callable[[str], str]:
  """A robustjax path -> PyTorch module name function. ``block`` formats a
  block's prefix from ``s`` (stage, from 1), ``s0`` (stage, from 0) and
  ``j`` (block); ``layers`` renames a block's layers (others keep their
  name); ``top`` names the modules outside the stages."""

  def names(path: str) -> str:
    m = _BLOCK.match(path)
    if not m:
      return top[path]
    stage, j, layer = m.groups()
    prefix = block.format(s=stage, s0=int(stage) - 1, j=j)
    return f"{prefix}.{layers.get(layer, layer)}"

  return names


_trades_wrn_names = _renamer(
    "block{s}.layer.{j}", {"shortcut/conv": "convShortcut"},
    {"stem/conv": "conv1", "final_bn": "bn1", "head/dense": "fc"})
_DM_TOP = {"final_bn": "batchnorm", "head/dense": "logits"}
_dm_wrn_names = _renamer(
    "layer.{s0}.block.{j}",
    {"bn1": "batchnorm_0", "conv1": "conv_0", "bn2": "batchnorm_1",
     "conv2": "conv_1", "shortcut/conv": "shortcut"},
    dict(_DM_TOP, **{"stem/conv": "init_conv"}))
_dm_preact_names = _renamer(
    "layer_{s0}.{j}",
    {"bn1": "batchnorm_0", "conv1": "conv_2d_1", "bn2": "batchnorm_1",
     "conv2": "conv_2d_2", "shortcut/conv": "shortcut"},
    dict(_DM_TOP, **{"stem/conv": "conv_2d"}))
# ResNet / PreActResNet of kuangliu/pytorch-cifar, as RobustBench has them:
# ``shortcut.0`` the conv and ``shortcut.1`` the BN of a Sequential.
_kuangliu_names = _renamer(
    "layer{s}.{j}",
    {"shortcut/conv": "shortcut.0", "shortcut/bn": "shortcut.1"},
    {"stem/conv": "conv1", "stem/bn": "bn1", "final_bn": "bn",
     "head/dense": "linear"})


ARCHS: dict[str, TorchArch] = {a.name: a for a in (
    TorchArch(
        "wide_resnet", "WideResNet(depth, widen_factor, num_classes"
        "[, sub_block1])  (the TRADES WideResNet)", "wrn",
        dict(activation="relu", padding="torch"), dict(depth=28, widen=10),
        *RAW, _trades_wrn_names, _wrn_infer("block1.layer", "fc"), True),
    TorchArch(
        "dm_wide_resnet", "DMWideResNet(num_classes, depth, width, "
        "activation_fn, mean, std)", "wrn", dict(padding="same"),
        dict(depth=28, widen=10, activation="relu"), CIFAR10_MEAN,
        CIFAR10_STD, _dm_wrn_names, _wrn_infer("layer.0.block", "logits"),
        False),
    TorchArch(
        "dm_preact_resnet18", "DMPreActResNet(num_classes, depth=18, width=0, "
        "activation_fn, mean, std)", "preact_resnet18",
        dict(padding="same", shortcut="raw3x3", final_bn=True),
        dict(activation="relu"), CIFAR10_MEAN, CIFAR10_STD, _dm_preact_names,
        lambda sd: _num_classes(sd, "logits"), False),
    TorchArch(
        "resnet18", "ResNet18() / ResNet(BasicBlock, [2, 2, 2, 2], "
        "num_classes)", "resnet18", {}, {}, *RAW, _kuangliu_names,
        lambda sd: _num_classes(sd, "linear"), True),
    TorchArch(
        "preact_resnet18", "PreActResNet(PreActBlock, [2, 2, 2, 2], "
        "num_classes)", "preact_resnet18",
        dict(activation="relu", padding="torch", shortcut="raw",
             final_bn=False), {}, *RAW, _kuangliu_names,
        lambda sd: _num_classes(sd, "linear"), True),
    TorchArch(
        "preact_resnet18_v2", "PreActResNet(PreActBlockV2, [2, 2, 2, 2], "
        "num_classes, bn_before_fc=True)", "preact_resnet18",
        dict(activation="relu", padding="torch", shortcut="preact",
             final_bn=True), {}, *RAW, _kuangliu_names,
        lambda sd: _num_classes(sd, "linear"), True),
)}


def get(name: str) -> TorchArch:
  """The architecture ``name``; ConfigError naming the choices otherwise."""
  if name not in ARCHS:
    raise ConfigError(f"unknown architecture {name!r}; choose one of: "
                      f"{', '.join(ARCHS)}")
  return ARCHS[name]


def arch_of(spec: Mapping[str, Any]) -> TorchArch:
  """The layout whose class computes the network of the full model ``spec``
  (``models.full_spec``), for export.

  Raises:
    ConfigError: a spec no supported PyTorch class computes (another model,
      a ``width`` other than 1, or an option combination none has).
  """
  if float(spec["width"]) != 1.0:
    raise ConfigError(
        f"model {spec['name']} at width {spec['width']:g} has no PyTorch "
        "class to export to: the RobustBench classes are full width "
        "(width 1; WideResNets set depth and widen instead)")
  name = spec["name"]
  model = "wrn" if name.startswith("wrn") else name
  for arch in ARCHS.values():
    if arch.model == model and all(
        spec.get(k) == v for k, v in arch.fixed.items()):
      return arch
  options = {k: v for k, v in spec.items()
             if k not in ("name", "width", "num_classes", "mean", "std")}
  raise ConfigError(
      f"no supported PyTorch class computes model {name} with {options}; "
      f"exportable: {', '.join(ARCHS)} (docs/interop.md)")
