"""PyTorch and RobustBench models in robustjax, and back.

* ``convert``: ``from_torch(state_dict, arch=..., **options) -> (variables,
  spec)`` and ``to_torch(variables, spec) -> state_dict``, exact to the bit.
* ``archs``: the PyTorch layouts (``ARCHS``): the TRADES ``wide_resnet``,
  DeepMind's ``dm_wide_resnet`` and ``dm_preact_resnet18``, ``resnet18``,
  ``preact_resnet18`` (PreActBlock) and ``preact_resnet18_v2``.
* ``files``: ``read_state_dict(path)`` (``torch.load(weights_only=True)``,
  pickles refused unless opted in; ``.safetensors``) and
  ``write_state_dict``.
* ``robustbench``: RobustBench model names -> architecture and options.

PyTorch is imported only to read or write ``.pt`` files and to build
``to_torch``'s tensors; ``from_torch`` takes any arrays.
"""

from robustjax.interop.archs import ARCHS
from robustjax.interop.convert import from_torch, strip_prefixes, to_torch
from robustjax.interop.files import read_state_dict, write_state_dict

__all__ = ["ARCHS", "from_torch", "read_state_dict", "strip_prefixes",
           "to_torch", "write_state_dict"]
