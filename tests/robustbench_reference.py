"""RobustBench 1.1.1's architecture files as reference networks for tests.

``architecture_file(name)`` loads ``robustbench/model_zoo/architectures/
NAME.py`` by file path: importing ``robustbench.*`` would run the package
``__init__``, which needs timm, torchvision, gdown and pandas; the
architecture files need only torch. ``randomise`` gives a model random
BatchNorm parameters and statistics so that a test sees them in use.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn


def architecture_file(name: str):
  """RobustBench's ``model_zoo/architectures/NAME.py`` as a module, loaded
  by path (importing ``robustbench.*`` would run the package __init__)."""
  spec = importlib.util.find_spec("robustbench")
  if spec is None:
    pytest.skip("robustbench==1.1.1 is a test dependency "
                "(requirements-nodeps.txt)")
  path = os.path.join(spec.submodule_search_locations[0], "model_zoo",
                      "architectures", f"{name}.py")
  module_spec = importlib.util.spec_from_file_location(f"rb_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def randomise(model, seed: int) -> None:
  """Random BatchNorm affine parameters and running statistics (so the
  test sees them in use) and random Linear biases; eval mode."""
  gen = torch.Generator().manual_seed(seed)

  def uniform(t, lo, hi):
    t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))

  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        uniform(m.weight, 0.5, 1.5)
        uniform(m.bias, -0.5, 0.5)
        uniform(m.running_mean, -0.5, 0.5)
        uniform(m.running_var, 0.5, 2.0)
      elif isinstance(m, nn.Linear) and m.bias is not None:
        uniform(m.bias, -0.5, 0.5)
  model.eval()
