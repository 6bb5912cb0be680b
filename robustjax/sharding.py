"""Device mesh and shardings: a ``data`` mesh for every compiled step.

A single CPU is a 1-device mesh; tests use 8 fake CPU devices. Batches are
always split over every device of the mesh. The training state (parameters, BatchNorm
statistics, optimizer state) follows one of two strategies, picked by
``config.sharding.strategy``:

* ``dp`` (default): every device holds a full copy of the state; gradients
  are all-reduced.
* ``fsdp`` (ZeRO-3 / fully sharded data parallelism): the parameters and the
  optimizer state are split over the same ``data`` axis as the batch. The rule
  (``leaf_spec``) is a pure function of a leaf's shape, so it runs on abstract
  (``jax.eval_shape``) trees and an optimizer leaf with its parameter's shape
  gets its parameter's sharding:

  - a leaf of at least ``min_size`` elements (default 2**14) is split along
    its largest dimension divisible by the device count (the first such one
    on ties), e.g. a [3, 3, 640, 640] conv kernel over 8 devices becomes
    [3, 3, 80, 640] per device;
  - smaller leaves (biases, LayerNorm/BN scales, the step counter), leaves
    with no divisible dimension, and everything under ``batch_stats``
    (BatchNorm running statistics, updated from the batch every step) stay
    replicated.

  Inside the step the parameters are all-gathered for the forward and
  backward passes and the gradients are reduce-scattered back to the
  parameters' sharding (``fsdp_gather`` / ``fsdp_scatter``), so each device
  keeps about 1/N of the state between steps and computes on its 1/N of the
  batch.

  ``config.sharding.fsdp_size`` = k (a divisor of the device count N, 0 = N)
  makes it hybrid (HSDP): the mesh becomes 2-D, ``replica`` (N/k) x ``data``
  (k), the state is split over the k devices of each ``data`` group and
  replicated across the N/k groups, and the batch is split over all N. The
  parameter all-gathers then stay inside a group (e.g. one host's chips) and
  only the gradient reduction crosses groups.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Hybrid fsdp only: the outer axis over which the fsdp groups replicate.
REPLICA_AXIS = "replica"
STRATEGIES = ("dp", "fsdp")
# Leaves below this many elements stay replicated under fsdp: splitting them
# saves little memory and costs one collective each.
FSDP_MIN_SIZE = 2 ** 14


def make_mesh(num_devices: int | None = None, fsdp_size: int = 0) -> Mesh:
  """The mesh over all (or the first ``num_devices``) global devices.

  1-D ``data`` by default. With ``fsdp_size`` = k, 0 < k < N, a 2-D
  ``replica`` (N/k) x ``data`` (k) mesh for hybrid fsdp (see the module doc);
  k must divide N.
  """
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  n = len(devices)
  # Auto axis types: shardings are given at the jit boundary (in/out
  # shardings) and XLA propagates them inside the step.
  if fsdp_size in (0, n):
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)
  if not 0 < fsdp_size < n or n % fsdp_size:
    from robustjax.errors import ConfigError  # local: keeps this module leaf-level
    raise ConfigError(f"sharding.fsdp_size={fsdp_size} does not divide the "
                      f"{n} devices into groups; use a divisor of {n} "
                      "(0 = one group of all devices)")
  return jax.make_mesh((n // fsdp_size, fsdp_size), (REPLICA_AXIS, DATA_AXIS),
                       axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding for parameters and optimizer state: a full copy on each device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding for a batch: the leading (example) axis split over every
  device (``data``, or ``replica`` x ``data`` on a hybrid mesh)."""
  axes = tuple(mesh.axis_names)
  return NamedSharding(mesh, P(axes if len(axes) > 1 else DATA_AXIS))


def validate_strategy(strategy: str) -> None:
  """Raises a one-line ``ConfigError`` for an unknown sharding strategy."""
  from robustjax.errors import ConfigError  # local: keeps this module leaf-level
  if strategy not in STRATEGIES:
    raise ConfigError(f"unknown sharding.strategy {strategy!r}; choose one of "
                      f"{', '.join(STRATEGIES)}")


def leaf_spec(shape: tuple[int, ...], num_devices: int, *,
              min_size: int = FSDP_MIN_SIZE) -> P:
  """The fsdp PartitionSpec of one leaf of ``shape`` (see the module doc).

  ``P()`` (replicated) for small or indivisible leaves, else ``data`` on the
  largest dimension divisible by ``num_devices``, e.g. (3, 3, 64, 128) over 8
  devices -> ``P(None, None, None, 'data')``.
  """
  if num_devices <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  divisible = [d for d in range(len(shape)) if shape[d] % num_devices == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda d: (shape[d], -d))
  return P(*(DATA_AXIS if d == axis else None for d in range(len(shape))))


def _under_batch_stats(path) -> bool:
  """Whether a tree path (dict keys or dataclass fields) is BN statistics."""
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return "batch_stats" in names


def state_shardings(abstract_state: Any, mesh: Mesh, strategy: str = "dp",
                    *, min_size: int = FSDP_MIN_SIZE) -> Any:
  """A pytree of ``NamedSharding`` matching ``abstract_state``.

  Args:
    abstract_state: the training state (a ``TrainState`` or its dict form)
      of arrays or ``jax.ShapeDtypeStruct``s; only shapes are read.
    mesh: the ``data`` mesh (fsdp splits over its ``data`` axis only, so
      on a hybrid mesh the state is replicated over ``replica``).
    strategy: ``dp`` (all replicated) or ``fsdp`` (see the module doc).
    min_size: fsdp leaves with fewer elements stay replicated.
  """
  validate_strategy(strategy)
  n = mesh.shape[DATA_AXIS]

  def rule(path, leaf) -> NamedSharding:
    if strategy == "dp" or _under_batch_stats(path):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, leaf_spec(tuple(leaf.shape), n,
                                         min_size=min_size))
  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """``jax.ShapeDtypeStruct``s of ``abstract_tree`` carrying ``shardings``
  (what orbax restores onto)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)


def per_device_bytes(abstract_tree: Any, shardings: Any) -> int:
  """Bytes of ``abstract_tree`` held by one device (the largest share).

  Computed from shapes only: each leaf contributes
  ``prod(sharding.shard_shape(shape)) * itemsize``. All devices hold equal
  shares under ``leaf_spec``'s even splits, so one device's sum is the max.
  """
  total = 0
  for leaf, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard = s.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def fsdp_gather(tree: Any, mesh: Mesh) -> Any:
  """Inside a jitted step: the full (replicated) value of sharded ``tree``.

  XLA lowers this to one all-gather per sharded leaf (FSDP's forward
  gather); on already replicated leaves it is free.
  """
  return jax.lax.with_sharding_constraint(tree, replicated(mesh))


def fsdp_scatter(tree: Any, shardings: Any) -> Any:
  """Inside a jitted step: constrains (gradient) ``tree`` to ``shardings``;
  for a replicated-by-sum gradient XLA emits a reduce-scatter."""
  return jax.lax.with_sharding_constraint(tree, shardings)


def gather(tree: Any, mesh: Mesh) -> Any:
  """Outside jit: a replicated copy of a (possibly sharded) global ``tree``.

  A jitted identity rather than ``device_put`` so that it also works on
  arrays spanning several processes.
  """
  return jax.jit(_identity, out_shardings=replicated(mesh))(tree)


def _identity(tree: Any) -> Any:
  # Module-level so repeated ``gather`` calls hit jit's compilation cache.
  return tree


def put_replicated(tree, mesh: Mesh):
  """Places a pytree on every device of ``mesh`` (all processes' devices).

  Every process must pass the same values. With one process this is
  ``jax.device_put``. With several, ``device_put`` only accepts host data
  (numpy) for a sharding spanning other processes' devices, so each leaf goes
  through numpy first (typed PRNG keys via their raw ``key_data``), and
  arrays that already span several processes are resharded by ``gather``.
  """
  target = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, target)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x if x.sharding.is_equivalent_to(target, x.ndim) else gather(
          x, mesh)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), target)
  return jax.tree.map(put, tree)


def put_global_batch(local_batch, mesh: Mesh):
  """Turns this host's slice of a batch into one global array per leaf.

  Args:
    local_batch: pytree of numpy arrays with leading axis
      ``global_batch // jax.process_count()``: this process's rows.
    mesh: the mesh whose devices split the batch (``batch_sharded``).

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
