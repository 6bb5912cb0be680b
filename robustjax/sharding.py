"""Device mesh and shardings: one data-parallel mesh for every compiled step.

A single CPU is a 1-device mesh; tests use 8 fake CPU devices. Parameters are
replicated and batches are split over the ``data`` axis of the mesh.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all (or the first ``num_devices``) global devices."""
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  # Auto axis types: shardings are given at the jit boundary (in/out
  # shardings) and XLA propagates them inside the step.
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding for parameters and optimizer state: a full copy on each device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding for a batch: the leading (example) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(tree, mesh: Mesh):
  """Places a host pytree on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def put_global_batch(local_batch, mesh: Mesh):
  """Turns this host's slice of a batch into one global array per leaf.

  Args:
    local_batch: pytree of numpy arrays with leading axis
      ``global_batch // jax.process_count()``: this process's rows.
    mesh: the mesh whose ``data`` axis splits the batch.

  Returns:
    The same pytree of global ``jax.Array``s of leading size ``global_batch``,
    sharded over ``data``.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises ``ConfigError`` unless ``batch_size`` splits evenly over devices."""
  from robustjax.errors import ConfigError  # local: keeps this module leaf-level
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(
        f"batch size {batch_size} does not divide over {n} devices; "
        f"use a multiple of {n}")
