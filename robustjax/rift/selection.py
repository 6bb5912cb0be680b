"""RiFT's last stage: interpolate back toward the robust weights and pick
alpha."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from robustjax.errors import ConfigError
from robustjax.weightspace import interpolate as interp_lib


def interpolate_states(robust: Mapping[str, Any], finetuned: Mapping[str, Any],
                       alpha: float) -> dict[str, Any]:
  """``(1 - alpha) robust + alpha finetuned`` for params *and* BatchNorm
  statistics (the reference interpolates the whole state dict). Alpha 0 and
  1 return the endpoints themselves, so they are exact."""
  alpha = interp_lib.check_alpha(alpha)
  if alpha == 0.0:
    return dict(robust)
  if alpha == 1.0:
    return dict(finetuned)
  return interp_lib.interpolate_variables(robust, finetuned, alpha,
                                          batch_stats="interpolate")


def check_alphas(alphas: Sequence[float]) -> list[float]:
  """The grid as floats; ConfigError if empty or outside [0, 1]."""
  alphas = [float(a) for a in alphas]
  if not alphas:
    raise ConfigError("the alpha grid is empty; use e.g. "
                      "--config.alphas='(0.0, 0.1, ..., 1.0)'")
  for a in alphas:
    if not np.isfinite(a) or not 0.0 <= a <= 1.0:
      raise ConfigError(f"alpha={a:g} is outside [0, 1]; RiFT interpolates "
                        "between the robust (0) and fine-tuned (1) models")
  return alphas


def select_alpha(curve: Sequence[Mapping[str, Any]], robust_adv_acc: float,
                 tolerance: float = 0.001) -> dict[str, Any]:
  """The point with the best clean accuracy whose robust accuracy is at
  least ``robust_adv_acc - tolerance`` (fractions: 0.001 = 0.1 points).
  Ties go to the smaller alpha. If no point qualifies, the smallest alpha.
  """
  ok = [p for p in curve if p["adv_acc"] >= robust_adv_acc - tolerance - 1e-12]
  if not ok:
    return min(curve, key=lambda p: p["alpha"])
  return max(ok, key=lambda p: (p["clean_acc"], -p["alpha"]))
