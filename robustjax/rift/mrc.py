"""Module Robust Criticality (MRC): how much the adversarial loss can grow
when one kernel alone moves within a relative Frobenius ball.

Follows the reference code (microsoft/robustlearn RiFT/main.py
``layer_sharpness``): the adversarial set is made once against the robust
model and held fixed; plain SGD ascent with lr 1 over shuffled batches,
``REFERENCE_STEPS_PER_EPOCH`` steps an epoch for 10 epochs, the projection
only at the end of each epoch, a full evaluation after each projection, and
MRC = the largest of those losses minus the unperturbed loss. BatchNorm
stays in inference mode throughout.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data, sharding
from robustjax.attacks import Attack
from robustjax.errors import ConfigError
from robustjax.rift.modules import KERNEL, check_module, kernel_modules
from robustjax.weightspace import trees

# The reference's ascent: batches of 512 over the 10,000 CIFAR test points,
# ceil(10000 / 512) = 20 steps an epoch. With lr 1 and no momentum, how far
# an epoch moves the weights before its projection depends on the number of
# steps, not on the batch size, so this is what MRC keeps fixed.
REFERENCE_STEPS_PER_EPOCH = 20


def adversarial_set(apply_fn: Callable[..., Any], variables: Any,
                    split: data.ArraySplit, mesh, *, attack: Attack,
                    num_examples: int, batch_size: int = 256, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """``attack``'s examples of the first ``num_examples`` points, made once
  against ``variables`` with BatchNorm in inference mode, each example
  keyed by its index in the split (the reference: PGD-10 at 8/255, step
  2/225, a typo for 2/255 that is what runs, uniform random start).

  Returns:
    ``(images float32 [N, H, W, 3] in [0, 1], labels int32 [N])``.
  """

  def step(variables, batch, key):
    logits_fn = lambda z: apply_fn(variables, z, train=False)  # noqa: E731
    x_adv = attack(logits_fn, data.to_float(batch["image"]), batch["label"],
                   data.example_keys(key, batch["index"]))
    return {"x_adv": x_adv}

  rows = data.collect_rows(data.compile_step(step, mesh), variables, split,
                           mesh, batch_size=batch_size,
                           num_examples=num_examples, key=jax.random.key(seed))
  return rows["x_adv"].astype(np.float32), split.labels[:num_examples].copy()


def project(delta: jax.Array, reference: jax.Array,
            epsilon: float) -> jax.Array:
  """``delta`` rescaled onto ``||delta||_F <= epsilon * ||reference||_F``
  (one Frobenius norm over the whole tensor, as the reference)."""
  limit = epsilon * jnp.linalg.norm(reference.ravel())
  norm = jnp.linalg.norm(delta.ravel())
  return delta * jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))


def ascent_plan(n: int, *, steps_per_epoch: int = REFERENCE_STEPS_PER_EPOCH,
                batch_size: int = 0, num_devices: int = 1
                ) -> tuple[int, int]:
  """How MRC's ascent walks ``n`` points each epoch: ``(steps, width)``.

  ``steps_per_epoch`` > 0 (the default, the reference's 20): the shuffled
  points are cut into ``min(steps_per_epoch, n)`` batches of nearly equal
  size (sizes differ by at most one), so every epoch takes the reference's
  number of steps and sees every point once, whatever ``n``. ``batch_size``
  > 0 instead (``steps_per_epoch`` 0): consecutive batches of that many
  points, the last one smaller, ``ceil(n / batch_size)`` steps.

  ``width`` is the number of rows each compiled step takes: the largest
  batch, rounded up to a multiple of ``num_devices`` (padding rows carry no
  weight). A derived width is rounded for the devices; an explicit
  ``batch_size`` must already divide over them.

  Raises:
    ConfigError: both or neither of ``steps_per_epoch`` and ``batch_size``
      set, or ``n`` < 1.
  """
  if n < 1:
    raise ConfigError(f"MRC needs at least one adversarial point; got {n}")
  if (steps_per_epoch > 0) == (batch_size > 0):
    raise ConfigError(
        f"set one of mrc.steps_per_epoch (default {REFERENCE_STEPS_PER_EPOCH}"
        f") and mrc.batch_size, the other 0; got {steps_per_epoch} and "
        f"{batch_size}")
  if batch_size > 0:
    return -(-n // batch_size), batch_size
  steps = min(steps_per_epoch, n)
  rows = -(-n // steps)
  return steps, -(-rows // num_devices) * num_devices


def epoch_batches(order: np.ndarray, steps: int, width: int,
                  batch_size: int = 0
                  ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
  """``(rows [width], mask [width])`` for each of ``steps`` batches of
  ``order`` (see ``ascent_plan``): ``batch_size`` > 0 cuts consecutive
  batches of that size, else ``steps`` nearly equal ones. Each is padded to
  ``width`` rows with row 0 and mask 0 so every batch has one compiled
  shape; the padding rows carry no weight, so each batch's loss is the mean
  over its real rows (as a PyTorch loader's smaller last batch)."""
  if batch_size > 0:
    chunks = [order[i:i + batch_size] for i in range(0, len(order),
                                                     batch_size)]
  else:
    chunks = np.array_split(order, steps)
  for rows in chunks:
    mask = np.zeros(width, np.float32)
    mask[:len(rows)] = 1
    yield np.concatenate([rows, np.zeros(width - len(rows), rows.dtype)]), mask


def _losses(apply_fn, batch_stats):
  """``(params, images, labels, mask) -> (mean CE, (sum CE, correct))``
  over the masked rows, BatchNorm in inference mode."""
  def loss(params, images, labels, mask):
    logits = apply_fn({"params": params, "batch_stats": batch_stats},
                      images, train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    ce = -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return (jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0),
            (jnp.sum(ce * mask), jnp.sum(correct * mask)))
  return loss


def _steps(apply_fn, batch_stats, epsilon: float, mesh):
  """The compiled ascent, evaluation and projection steps. The module is a
  0/1 mask argument over the kernels, so one program serves every module."""
  loss = _losses(apply_fn, batch_stats)

  def moved(flat, delta, mask):
    return trees.unflatten({k: v + mask[k] * delta[k] if k in delta else v
                            for k, v in flat.items()})

  def ascent(flat, delta, mask, images, labels, rows_mask, lr):
    def objective(d):
      return loss(moved(flat, d, mask), images, labels, rows_mask)[0]
    g = jax.grad(objective)(delta)
    # Gradient *ascent* (the reference minimises -CE with SGD lr 1).
    return {k: delta[k] + lr * mask[k] * g[k] for k in delta}

  def evaluate(tree, batch, key):
    del key
    flat, delta, mask = tree
    s_ce, s_ok = loss(moved(flat, delta, mask), data.to_float(batch["image"]),
                      batch["label"], batch["mask"].astype(jnp.float32))[1]
    return {"ce": s_ce, "correct": s_ok}

  def project_all(flat, delta):
    return {k: project(delta[k], flat[k], epsilon) for k in delta}

  rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return (jax.jit(ascent, in_shardings=(rep, rep, rep, shard, shard, shard,
                                        rep), out_shardings=rep),
          data.compile_step(evaluate, mesh, keyed=False),
          jax.jit(project_all, out_shardings=rep))


def mrc(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
        adv_images: np.ndarray, labels: np.ndarray, *,
        modules: Sequence[str] | None = None, epsilon: float = 0.1,
        epochs: int = 10, lr: float = 1.0,
        steps_per_epoch: int = REFERENCE_STEPS_PER_EPOCH, batch_size: int = 0,
        seed: int = 0, mesh=None, log: Callable[[str], None] | None = None
        ) -> list[dict[str, Any]]:
  """Module Robust Criticality of each conv/dense kernel (reference code).

  For each module: ``epochs`` passes of plain SGD *ascent* (lr ``lr``, no
  momentum) on the CE of the fixed adversarial set, each pass
  ``steps_per_epoch`` shuffled batches that together cover the set once
  (the reference's 20 by default, whatever N: ``ascent_plan``); after each
  pass ``delta = w - w0`` is projected onto ``||delta||_F <= epsilon
  ||w0||_F`` and the CE of the whole set is evaluated. MRC = the largest of
  those losses minus the unperturbed loss. BatchNorm uses its running
  statistics and never changes.

  Args:
    apply_fn: a Flax ``apply`` (``apply_fn(variables, x, train=False)``).
    variables: ``{"params", "batch_stats"}`` of the robust model.
    adv_images: float32 ``[N, H, W, 3]`` adversarial inputs in [0, 1].
    labels: int ``[N]`` true labels.
    modules: module paths (default ``kernel_modules``).
    epsilon: relative Frobenius radius.
    epochs, lr, seed: the ascent (reference: 10 epochs, lr 1).
    steps_per_epoch: ascent steps per epoch (reference: 20, its batches of
      512 over 10,000 points); the batch size follows from N.
    batch_size: > 0 (with ``steps_per_epoch=0``): fixed batches of this
      size instead, ``ceil(N / batch_size)`` steps an epoch.
    mesh: device mesh (default one device); an explicit ``batch_size``
      must divide over it, a derived one is rounded up to.
    log: called with one line per module.

  Returns:
    One record per module, sorted by ascending ``mrc``: ``{"module", "mrc",
    "loss", "worst_loss", "acc", "worst_acc", "acc_drop", "rel_norm"
    (||delta||/||w0|| at the worst point), "ascent_norm" (the largest
    ||delta||/||w0|| an epoch's ascent reached before its projection: above
    ``epsilon`` means the ball's surface was reached), "worst_epoch",
    "ascent_steps" (ascent steps taken, ``epochs`` x steps per epoch),
    "batch_size" (points per step, at most), "num_params"}``.
  """
  if not epsilon > 0 or epochs < 1:
    raise ConfigError(f"mrc needs epsilon > 0 and epochs >= 1; got "
                      f"{epsilon}, {epochs}")
  mesh = mesh or sharding.make_mesh(1)
  n = len(labels)
  steps, width = ascent_plan(n, steps_per_epoch=steps_per_epoch,
                             batch_size=batch_size, num_devices=mesh.size)
  sharding.check_batch_divisible(width, mesh)
  params = variables["params"]
  modules = list(modules) if modules is not None else kernel_modules(params)
  for m in modules:
    check_module(params, m)
  ascent, evaluate, project_all = _steps(
      apply_fn, variables.get("batch_stats", {}), epsilon, mesh)
  flat = sharding.put_replicated(
      {k: jnp.asarray(v) for k, v in trees.flatten(params).items()}, mesh)
  kernels = [f"{m}{trees.SEP}{KERNEL}" for m in kernel_modules(params)]
  zeros = {k: jnp.zeros_like(flat[k]) for k in kernels}
  images = np.asarray(adv_images, np.float32)
  labels = np.asarray(labels, np.int32)
  adversarial = data.ArraySplit(images, labels, 0, "mrc")
  shard = sharding.batch_sharded(mesh)

  def full_pass(delta, mask):
    sums = data.sum_batches(evaluate, (flat, delta, mask), adversarial, mesh,
                            batch_size=width)
    return sums["ce"] / n, sums["correct"] / n

  def ascend(delta, mask, rows, rows_mask):
    return ascent(flat, delta, mask, jax.device_put(images[rows], shard),
                  jax.device_put(labels[rows], shard),
                  jax.device_put(rows_mask, shard), jnp.float32(lr))

  base = full_pass(zeros, {k: jnp.float32(0) for k in kernels})
  table = []
  for module in modules:
    start = time.time()
    leaf = f"{module}{trees.SEP}{KERNEL}"
    mask = sharding.put_replicated(
        {k: jnp.float32(k == leaf) for k in kernels}, mesh)
    delta, worst = zeros, (*base, 0.0, 0)
    rng = np.random.default_rng([seed, len(table)])
    taken, reach = 0, 0.0
    w0_norm = float(jnp.linalg.norm(flat[leaf].ravel()))
    for epoch in range(epochs):
      for rows, rows_mask in epoch_batches(rng.permutation(n), steps, width,
                                           batch_size=batch_size):
        delta = ascend(delta, mask, rows, rows_mask)
        taken += 1
      reach = max(reach, float(jnp.linalg.norm(delta[leaf].ravel()))
                  / max(w0_norm, 1e-30))
      delta = project_all(flat, delta)
      ep_loss, ep_acc = full_pass(delta, mask)
      if ep_loss > worst[0]:
        rel = float(jnp.linalg.norm(delta[leaf].ravel())) / max(w0_norm,
                                                                1e-30)
        worst = (ep_loss, ep_acc, rel, epoch + 1)
    record = {"module": module, "mrc": worst[0] - base[0],
              "loss": base[0], "worst_loss": worst[0], "acc": base[1],
              "worst_acc": worst[1], "acc_drop": base[1] - worst[1],
              "rel_norm": worst[2], "ascent_norm": reach,
              "worst_epoch": worst[3], "ascent_steps": taken,
              "batch_size": batch_size or -(-n // steps),
              "num_params": int(flat[leaf].size)}
    table.append(record)
    if log is not None:
      log(f"mrc {module}: {record['mrc']:.4f} (loss {base[0]:.3f} -> "
          f"{worst[0]:.3f}, robust acc {100 * base[1]:.2f}% -> "
          f"{100 * worst[1]:.2f}%) {time.time() - start:.1f} s")
  return sorted(table, key=lambda r: (r["mrc"], r["module"]))
