"""RiFT's second stage: fine-tune one kernel on clean data."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import data, sharding
from robustjax.rift.modules import KERNEL, check_module
from robustjax.weightspace import batchnorm, trees

# total steps -> (the optimizer, its learning-rate schedule)
OptimizerFn = Callable[[int], tuple[optax.GradientTransformation,
                                    optax.Schedule]]


def _train_step(apply_fn, tx, schedule, leaf: str, *, train_bn: bool,
                augment: bool):
  """``(kernel, frozen, opt_state, batch_stats, batch, key, count) ->
  (kernel, opt_state, batch_stats, metrics)``: one SGD step of ``leaf``."""

  def step(kernel, frozen, opt_state, batch_stats, batch, key, count):
    x = (data.random_crop_flip(key, batch["image"]) if augment
         else data.to_float(batch["image"]))

    def loss_fn(kernel):
      v = {"params": trees.unflatten({**frozen, leaf: kernel}),
           "batch_stats": batch_stats}
      if train_bn:
        logits, upd = apply_fn(v, x, train=True, mutable=["batch_stats"])
        new_stats = upd.get("batch_stats", batch_stats)
      else:
        logits, new_stats = apply_fn(v, x, train=False), batch_stats
      ce = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), batch["label"]).mean()
      return ce, new_stats

    (ce, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(kernel)
    # The optimizer sees a one-leaf tree with the kernel's own path, so
    # weight_decay_on='kernels' masks still apply.
    tree = trees.unflatten({leaf: kernel})
    updates, opt_state = tx.update(trees.unflatten({leaf: g}), opt_state,
                                   tree)
    kernel = trees.flatten(optax.apply_updates(tree, updates))[leaf]
    return kernel, opt_state, new_stats, {"loss": ce, "lr": schedule(count)}

  return step


def finetune(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
             module: str, train_split: data.ArraySplit, mesh, *,
             optimizer: OptimizerFn, epochs: int = 10, batch_size: int = 128,
             steps_per_epoch: int = 0, bn: str = "train", augment: bool = True,
             seed: int = 0,
             eval_fn: Callable[[dict[str, Any]], float] | None = None,
             log: Callable[[str], None] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Fine-tunes only ``module``'s kernel on clean data with plain CE.

  The optimizer (``optimizer(total_steps)``, e.g. SGD with momentum,
  coupled weight decay and a schedule from
  ``training.optimizer.make_optimizer``) is applied to that one tensor, so
  both its updates and its weight decay are masked to it; every other
  parameter is passed through untouched (bit-identical). ``bn``
  (``weightspace.batchnorm.FINETUNE_MODES``): ``'train'`` (the reference)
  normalises with batch statistics and every BatchNorm's running statistics
  move to the clean data; ``'keep_a'`` runs BatchNorm in inference mode and
  keeps the robust model's.

  Args:
    apply_fn: a Flax ``apply``.
    variables: ``{"params", "batch_stats"}`` of the robust model.
    module: the module path (see ``check_module``).
    train_split: clean training data (uint8 images).
    mesh: device mesh; ``batch_size`` must divide over it.
    optimizer: ``total_steps -> (tx, schedule)``.
    epochs: passes; ``steps_per_epoch`` > 0 caps the steps of each (tests).
    eval_fn: ``variables -> clean accuracy`` on the selection split after
      each epoch; the best epoch is returned (the last one without it).

  Returns:
    ``(best variables, [{"epoch", "clean_acc", "loss"}, ...])``.
  """
  batchnorm.check_mode(bn, batchnorm.FINETUNE_MODES, "finetune.bn")
  module = check_module(variables["params"], module)
  leaf = f"{module}{trees.SEP}{KERNEL}"
  batches = data.TrainBatches(train_split, batch_size, seed, mesh)
  per_epoch = batches.steps_per_epoch
  if steps_per_epoch > 0:
    per_epoch = min(per_epoch, steps_per_epoch)
  tx, schedule = optimizer(epochs * per_epoch)
  flat = trees.flatten(variables["params"])
  rep = sharding.replicated(mesh)
  step = jax.jit(_train_step(apply_fn, tx, schedule, leaf,
                             train_bn=bn == "train", augment=augment),
                 in_shardings=(rep, rep, rep, rep,
                               sharding.batch_sharded(mesh), rep, rep),
                 out_shardings=rep)
  # An argument, not a closure: large constants would be baked into the
  # compiled program.
  frozen = sharding.put_replicated({k: v for k, v in flat.items()
                                    if k != leaf}, mesh)
  kernel = sharding.put_replicated(jnp.asarray(flat[leaf]), mesh)
  batch_stats = sharding.put_replicated(variables.get("batch_stats", {}),
                                        mesh)
  opt_state = sharding.put_replicated(
      tx.init(trees.unflatten({leaf: kernel})), mesh)
  root = jax.random.key(seed)

  def assemble(kernel, batch_stats):
    # The frozen leaves are the caller's own arrays: bit-identical.
    return {"params": trees.unflatten({**flat, leaf: np.asarray(kernel)}),
            "batch_stats": jax.tree.map(np.asarray, batch_stats)}

  history, best, best_acc, count = [], None, -1.0, 0
  for epoch in range(epochs):
    start, losses = time.time(), []
    for i in range(per_epoch):
      kernel, opt_state, batch_stats, metrics = step(
          kernel, frozen, opt_state, batch_stats,
          batches.batch(epoch * batches.steps_per_epoch + i),
          jax.random.fold_in(root, count), jnp.int32(count))
      losses.append(metrics["loss"])
      count += 1
    current = assemble(kernel, batch_stats)
    acc = float(eval_fn(current)) if eval_fn is not None else float("nan")
    history.append({"epoch": epoch + 1, "clean_acc": acc,
                    "loss": float(np.mean([float(v) for v in losses]))})
    if eval_fn is None or acc > best_acc:
      best, best_acc = current, acc
    if log is not None:
      log(f"finetune epoch {epoch + 1}/{epochs}: loss "
          f"{history[-1]['loss']:.4f} | selection clean {100 * acc:.2f}% "
          f"{time.time() - start:.1f} s")
  return best, history
