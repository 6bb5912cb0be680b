"""Which kernels XLA:CPU uses for convolutions.

jax 0.10's XLA:CPU hands every convolution to YNNPACK by default (a
``__ynn_fusion`` per convolution). On the CIFAR networks robustjax trains,
XLA's own convolution kernels are faster for most of them, and every attack
step is mostly convolutions: ``benchmarks/conv_layers.py
[--ynnpack-convolutions]`` measures the two on conv layers alone, and
``benchmarks/run.py --ynnpack-convolutions`` the whole steps (figures in
benchmarks/README.md). Both give the same results up to float32 rounding
(tests/test_xla_cpu.py).

``launch.py`` calls ``use_xla_convolutions()`` unless ``--ynnpack_convolutions``
is given; a notebook can call it before its first JAX computation. The flag
is an XLA:CPU one: GPU and TPU programs ignore it.
"""

from __future__ import annotations

import os

import jaxlib
from jax._src import xla_bridge

_FUSION_TYPES = "--xla_cpu_experimental_ynn_fusion_type"
# "-x" removes x from XLA's default list and keeps the rest (YNNPACK dots).
NO_YNNPACK_CONVOLUTIONS = f"{_FUSION_TYPES}=-individual_convolution"
# The flag is experimental, and XLA aborts the process on an XLA_FLAGS entry
# it does not know, so it is only set for the jaxlib releases where it was
# measured (requirements.txt pins one of them).
MEASURED_JAXLIB = ("0.10.",)


def use_xla_convolutions() -> bool:
  """Adds ``NO_YNNPACK_CONVOLUTIONS`` to ``XLA_FLAGS`` for this process.

  Must run before JAX starts its backends (the first device query or
  computation), because XLA reads ``XLA_FLAGS`` once, then. A choice of YNNPACK
  fusion types already in ``XLA_FLAGS`` is the user's and is kept.

  Returns:
    True if the flag was added; False if ``XLA_FLAGS`` already chose, or if
    this jaxlib is not one of ``MEASURED_JAXLIB`` (then XLA keeps its
    defaults).

  Raises:
    RuntimeError: the backends have already started, so the flag could not
      take effect.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if (_FUSION_TYPES in flags
      or not jaxlib.__version__.startswith(MEASURED_JAXLIB)):
    return False
  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
        "use_xla_convolutions() must run before JAX's first computation or "
        "device query; call it right after importing jax")
  os.environ["XLA_FLAGS"] = f"{flags} {NO_YNNPACK_CONVOLUTIONS}".strip()
  return True
