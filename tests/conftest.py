"""Test set-up: 8 fake CPU devices, so sharding tests see a real mesh, and
XLA:CPU's convolution kernels as launch.py picks them.

This must run before any JAX backend starts, which is why it lives here.
Single-device tests build ``robustjax.sharding.make_mesh(1)`` explicitly.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

from robustjax import xla_cpu  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
xla_cpu.use_xla_convolutions()  # the kernels launch.py runs with
