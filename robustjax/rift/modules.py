"""RiFT's modules: the conv and dense kernels of a network, and the choice
of the one to fine-tune."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from robustjax.errors import ConfigError
from robustjax.weightspace import trees

KERNEL = "kernel"
CHOICES = ("lowest", "middle", "path")


def kernel_modules(params: Any, order: Sequence[str] | None = None
                   ) -> list[str]:
  """The conv and dense modules of ``params`` in depth order.

  A module is a layer owning a ``kernel`` leaf of rank >= 2 (conv
  ``[kh, kw, cin, cout]`` or dense ``[din, dout]``); biases and norm scales
  are never candidates, as in the reference.
  """
  flat = trees.flatten(params)
  names = [trees.layer_of(p) for p, v in flat.items()
           if p.rsplit(trees.SEP, 1)[-1] == KERNEL and np.ndim(v) >= 2]
  return trees.depth_order(names, order)


def _as_module(path: str) -> str:
  """A module path from a module or kernel path (``.../kernel``)."""
  module = path.strip().strip(trees.SEP)
  if module.endswith(trees.SEP + KERNEL):
    module = trees.layer_of(module)
  return module


def check_module(params: Any, module: str) -> str:
  """``module`` as a module path (``.../kernel`` accepted), or ConfigError
  when it does not exist or is not a conv/dense kernel."""
  module = _as_module(module)
  flat = trees.flatten(params)
  candidates = kernel_modules(params)
  if module in candidates:
    return module
  if not any(trees.layer_of(p) == module or p == module for p in flat):
    raise ConfigError(
        f"module '{module}' is not in the checkpoint; choose one of the conv/"
        f"dense modules, e.g. {', '.join(candidates[:3])} (see mrc.csv)")
  raise ConfigError(
      f"module '{module}' has no conv or dense kernel (biases and norms are "
      f"not RiFT modules); choose e.g. {', '.join(candidates[:3])}")


def choose_module(table: Sequence[Mapping[str, Any]], rule: str = "lowest",
                  *, path: str = "", order: Sequence[str] | None = None,
                  fraction: float = 0.25) -> str:
  """The module to fine-tune, from an MRC table (``mrc``'s records).

  ``lowest``: the argmin of MRC (the paper's Eq. 7). ``middle``: the
  reference README's advice, made a rule: among the ``fraction`` of modules
  with the lowest MRC (at least one), the one nearest the middle of the
  network (by position in ``order``, default depth order), ties to the lower
  MRC. ``path``: ``path`` itself (it must be in the table).
  """
  if rule not in CHOICES:
    raise ConfigError(f"module choice '{rule}' is not one of {CHOICES}")
  ranked = sorted(table, key=lambda r: (r["mrc"], r["module"]))
  names = [r["module"] for r in ranked]
  if rule == "path":
    module = _as_module(path)
    if module not in names:
      raise ConfigError(f"module '{path}' is not a conv/dense module of the "
                        f"MRC table; choose one of {', '.join(names[:5])} ...")
    return module
  if rule == "lowest":
    return names[0]
  depth = trees.depth_order(names, order)
  middle = (len(depth) - 1) / 2
  k = max(1, int(round(fraction * len(names))))
  return min(names[:k], key=lambda m: (abs(depth.index(m) - middle),
                                       names.index(m)))
