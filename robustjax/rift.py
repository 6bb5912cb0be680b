"""RiFT (Zhu et al., ICCV 2023): robust critical fine-tuning.

Three stages, each a function of arrays and pytrees (no model class needed
beyond a Flax ``apply``):

1. ``mrc``: Module Robust Criticality of every conv/dense kernel, the largest
   increase of the adversarial cross-entropy when only that kernel moves by
   ``delta`` with ``||delta||_F <= epsilon * ||w||_F``. As in the reference
   code (microsoft/robustlearn RiFT/main.py ``layer_sharpness``): the
   adversarial set is made once against the robust model and held fixed;
   plain SGD ascent with lr 1 over shuffled batches for 10 epochs, the
   projection applied only at the end of each epoch, a full evaluation after
   each projection, and MRC = the maximum of those 10 losses minus the
   unperturbed loss. BatchNorm stays in inference mode throughout.
2. ``choose_module`` then ``finetune``: train only the least critical kernel
   on clean data (SGD momentum 0.9, weight decay 5e-4 on that kernel only,
   lr 1e-3 x0.1 at half the epochs), BatchNorm running statistics of the
   whole network re-estimated on the clean batches (the reference's
   ``model.train()``; ``bn='frozen'`` turns this off), keeping the epoch with
   the best clean accuracy.
3. ``interpolate_states`` over an alpha grid and ``select_alpha``: the alpha
   with the best clean accuracy whose robust accuracy stays within
   ``tolerance`` of the robust model's.

The ``rift`` task (``run_rift``) chains the three behind ``launch.py``; see
docs/rift.md and configs/rift.py. Module paths are layer paths such as
``stage2/block1/conv2``; a kernel leaf is ``<module>/kernel``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from robustjax import attacks, data, sharding
from robustjax.errors import ConfigError
from robustjax.weightspace import interpolate as interp_lib
from robustjax.weightspace import trees

KERNEL = "kernel"
CHOICES = ("lowest", "middle", "path")
BN_MODES = ("train", "frozen")
SELECTIONS = ("val", "paper")


# ------------------------------------------------------------------ modules


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


def check_module(params: Any, module: str) -> str:
  """``module`` as a module path (``.../kernel`` accepted), or ConfigError
  when it does not exist or is not a conv/dense kernel."""
  module = module.strip().strip(trees.SEP)
  if module.endswith(trees.SEP + KERNEL):
    module = trees.layer_of(module)
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


# ----------------------------------------------------------------- MRC


def adversarial_set(apply_fn: Callable[..., Any], variables: Any,
                    split: data.ArraySplit, mesh, *, num_examples: int,
                    eps: float = 8 / 255, step_size: float = 2 / 225,
                    steps: int = 10, batch_size: int = 256, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """PGD examples of the first ``num_examples`` points, made once.

  Against ``variables`` with BatchNorm in inference mode, uniform random
  start keyed per example (by its index in the split). The default step
  2/225 is the reference's (a typo for 2/255 that is what runs).

  Returns:
    ``(images float32 [N, H, W, 3] in [0, 1], labels int32 [N])``.
  """

  def attack(variables, batch, key):
    x = data.to_float(batch["image"])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch["index"])
    logits_fn = lambda z: apply_fn(variables, z, train=False)  # noqa: E731
    return attacks.pgd(logits_fn, x, batch["label"], key=keys, eps=eps,
                       step_size=step_size, steps=steps, random_start=True)

  step = jax.jit(attack, in_shardings=(sharding.replicated(mesh),
                                       sharding.batch_sharded(mesh),
                                       sharding.replicated(mesh)),
                 out_shardings=sharding.replicated(mesh))
  variables = sharding.put_replicated(variables, mesh)
  key = sharding.put_replicated(jax.random.key(seed), mesh)
  chunks = [np.asarray(step(variables, batch, key))
            for batch in data.eval_batches(split, batch_size, mesh,
                                           num_examples=num_examples)]
  images = np.concatenate(chunks)[:num_examples].astype(np.float32)
  return images, split.labels[:num_examples].copy()


def project(delta: jax.Array, reference: jax.Array,
            epsilon: float) -> jax.Array:
  """``delta`` rescaled onto ``||delta||_F <= epsilon * ||reference||_F``
  (one Frobenius norm over the whole tensor, as the reference)."""
  limit = epsilon * jnp.linalg.norm(reference.ravel())
  norm = jnp.linalg.norm(delta.ravel())
  return delta * jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))


def _batched_loss_fn(apply_fn, batch_stats):
  """``(params, images, labels, mask) -> (mean CE, correct)`` over the
  masked rows, BatchNorm in inference mode (sharpness.py's loss)."""
  def loss(params, images, labels, mask):
    logits = apply_fn({"params": params, "batch_stats": batch_stats},
                      images, train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    ce = -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return (jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0),
            (jnp.sum(ce * mask), jnp.sum(correct * mask)))
  return loss


def _padded_batches(n: int, batch_size: int, order: np.ndarray | None = None
                    ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
  """``(rows, mask)`` per batch of ``batch_size`` rows (padded with row 0
  and mask 0 so every batch has one compiled shape; the padding rows carry
  no weight, so each batch's loss is the mean over its real rows, as a
  PyTorch loader's smaller last batch)."""
  order = np.arange(n) if order is None else order
  for start in range(0, n, batch_size):
    rows = order[start:start + batch_size]
    mask = np.ones(batch_size, np.float32)
    if len(rows) < batch_size:
      mask[len(rows):] = 0
      rows = np.concatenate([rows, np.zeros(batch_size - len(rows),
                                            rows.dtype)])
    yield rows, mask


def mrc(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
        adv_images: np.ndarray, labels: np.ndarray, *,
        modules: Sequence[str] | None = None, epsilon: float = 0.1,
        epochs: int = 10, lr: float = 1.0, batch_size: int = 512,
        seed: int = 0, mesh=None, log: Callable[[str], None] | None = None
        ) -> list[dict[str, Any]]:
  """Module Robust Criticality of each conv/dense kernel (reference code).

  For each module: ``epochs`` passes of plain SGD *ascent* (lr ``lr``, no
  momentum) on the CE of the fixed adversarial set in shuffled batches of
  ``batch_size``; after each pass ``delta = w - w0`` is projected onto
  ``||delta||_F <= epsilon ||w0||_F`` and the CE of the whole set is
  evaluated. MRC = the largest of those losses minus the unperturbed loss.
  One compiled step serves every module: the module is a 0/1 mask argument.
  BatchNorm uses its running statistics and never changes.

  Args:
    apply_fn: a Flax ``apply`` (``apply_fn(variables, x, train=False)``).
    variables: ``{"params", "batch_stats"}`` of the robust model.
    adv_images: float32 ``[N, H, W, 3]`` adversarial inputs in [0, 1].
    labels: int ``[N]`` true labels.
    modules: module paths (default ``kernel_modules``).
    epsilon: relative Frobenius radius.
    epochs, lr, batch_size, seed: the ascent (reference: 10, 1, 512).
    mesh: device mesh (default one device); ``batch_size`` must divide.
    log: called with one line per module.

  Returns:
    One record per module, sorted by ascending ``mrc``: ``{"module", "mrc",
    "loss", "worst_loss", "acc", "worst_acc", "acc_drop", "rel_norm"
    (||delta||/||w0|| at the worst point), "worst_epoch", "num_params"}``.
  """
  if not epsilon > 0 or epochs < 1 or batch_size < 1:
    raise ConfigError(f"mrc needs epsilon > 0, epochs >= 1, batch_size >= 1;"
                      f" got {epsilon}, {epochs}, {batch_size}")
  mesh = mesh or sharding.make_mesh(1)
  sharding.check_batch_divisible(batch_size, mesh)
  params = variables["params"]
  modules = list(modules) if modules is not None else kernel_modules(params)
  for m in modules:
    check_module(params, m)
  flat = {k: jnp.asarray(v) for k, v in trees.flatten(params).items()}
  kernels = [f"{m}{trees.SEP}{KERNEL}" for m in kernel_modules(params)]
  loss = _batched_loss_fn(apply_fn, variables.get("batch_stats", {}))

  def moved(flat, delta, mask):
    return trees.unflatten({k: v + mask[k] * delta[k] if k in delta else v
                            for k, v in flat.items()})

  def ascent(flat, delta, mask, images, labels, rows_mask, lr):
    def objective(d):
      return loss(moved(flat, d, mask), images, labels, rows_mask)[0]
    g = jax.grad(objective)(delta)
    # Gradient *ascent* (the reference minimises -CE with SGD lr 1).
    return {k: delta[k] + lr * mask[k] * g[k] for k in delta}

  def evaluate(flat, delta, mask, images, labels, rows_mask):
    return loss(moved(flat, delta, mask), images, labels, rows_mask)[1]

  def project_all(flat, delta):
    return {k: project(delta[k], flat[k], epsilon) for k in delta}

  rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  ascent = jax.jit(ascent, in_shardings=(rep, rep, rep, shard, shard, shard,
                                         rep), out_shardings=rep)
  evaluate = jax.jit(evaluate, in_shardings=(rep, rep, rep, shard, shard,
                                             shard), out_shardings=rep)
  project_all = jax.jit(project_all, out_shardings=rep)
  flat = sharding.put_replicated(flat, mesh)
  zeros = {k: jnp.zeros_like(flat[k]) for k in kernels}
  n = len(labels)
  images_np = np.asarray(adv_images, np.float32)
  labels_np = np.asarray(labels, np.int32)

  def put(rows, mask):
    return (jax.device_put(images_np[rows], shard),
            jax.device_put(labels_np[rows], shard),
            jax.device_put(mask, shard))

  def full_pass(delta, mask):
    ce = correct = 0.0
    for rows, rmask in _padded_batches(n, batch_size):
      s_ce, s_ok = evaluate(flat, delta, mask, *put(rows, rmask))
      ce, correct = ce + float(s_ce), correct + float(s_ok)
    return ce / n, correct / n

  no_mask = {k: jnp.float32(0) for k in kernels}
  base_loss, base_acc = full_pass(zeros, no_mask)
  table = []
  for module in modules:
    start = time.time()
    leaf = f"{module}{trees.SEP}{KERNEL}"
    mask = sharding.put_replicated(
        {k: jnp.float32(k == leaf) for k in kernels}, mesh)
    delta, worst = zeros, (base_loss, base_acc, 0.0, 0)
    rng = np.random.default_rng([seed, len(table)])
    for epoch in range(epochs):
      for rows, rmask in _padded_batches(n, batch_size, rng.permutation(n)):
        delta = ascent(flat, delta, mask, *put(rows, rmask), jnp.float32(lr))
      delta = project_all(flat, delta)
      ep_loss, ep_acc = full_pass(delta, mask)
      if ep_loss > worst[0]:
        rel = float(jnp.linalg.norm(delta[leaf].ravel())
                    / jnp.linalg.norm(flat[leaf].ravel()))
        worst = (ep_loss, ep_acc, rel, epoch + 1)
    record = {"module": module, "mrc": worst[0] - base_loss,
              "loss": base_loss, "worst_loss": worst[0], "acc": base_acc,
              "worst_acc": worst[1], "acc_drop": base_acc - worst[1],
              "rel_norm": worst[2], "worst_epoch": worst[3],
              "num_params": int(flat[leaf].size)}
    table.append(record)
    if log is not None:
      log(f"mrc {module}: {record['mrc']:.4f} (loss {base_loss:.3f} -> "
          f"{worst[0]:.3f}, robust acc {100 * base_acc:.2f}% -> "
          f"{100 * worst[1]:.2f}%) {time.time() - start:.1f} s")
  return sorted(table, key=lambda r: (r["mrc"], r["module"]))


def choose_module(table: Sequence[Mapping[str, Any]], rule: str = "lowest",
                  *, path: str = "", order: Sequence[str] | None = None,
                  fraction: float = 0.25) -> str:
  """The module to fine-tune.

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
    module = path.strip().strip(trees.SEP)
    if module.endswith(trees.SEP + KERNEL):
      module = trees.layer_of(module)
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


# ------------------------------------------------------------ fine-tuning


def finetune(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
             module: str, train_split: data.ArraySplit, mesh, *,
             optimizer_cfg: Any, epochs: int = 10, batch_size: int = 128,
             steps_per_epoch: int = 0, bn: str = "train", augment: bool = True,
             seed: int = 0,
             eval_fn: Callable[[dict[str, Any]], float] | None = None,
             log: Callable[[str], None] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Fine-tunes only ``module``'s kernel on clean data with plain CE.

  The optimizer (``training.optimizer.make_optimizer(optimizer_cfg)``: SGD,
  momentum, coupled weight decay, schedule) is applied to that one tensor,
  so both its updates and its weight decay are masked to it; every other
  parameter is passed through untouched (bit-identical). With ``bn='train'``
  (the reference) the forward pass normalises with batch statistics and
  every BatchNorm's running statistics move to the clean data; ``'frozen'``
  runs BatchNorm in inference mode and keeps them.

  Args:
    apply_fn: a Flax ``apply``.
    variables: ``{"params", "batch_stats"}`` of the robust model.
    module: the module path (see ``check_module``).
    train_split: clean training data (uint8 images).
    mesh: device mesh; ``batch_size`` must divide over it.
    optimizer_cfg: ``config.optimizer``-style dict (lr, momentum, ...).
    epochs: passes; ``steps_per_epoch`` > 0 caps the steps of each (tests).
    eval_fn: ``variables -> clean accuracy`` on the selection split after
      each epoch; the best epoch is returned (the last one without it).

  Returns:
    ``(best variables, [{"epoch", "clean_acc", "loss"}, ...])``.
  """
  from robustjax.training import optimizer as opt_lib  # local: heavy import
  if bn not in BN_MODES:
    raise ConfigError(f"bn='{bn}' is not one of {BN_MODES}")
  module = check_module(variables["params"], module)
  leaf = f"{module}{trees.SEP}{KERNEL}"
  batches = data.TrainBatches(train_split, batch_size, seed, mesh)
  per_epoch = batches.steps_per_epoch
  if steps_per_epoch > 0:
    per_epoch = min(per_epoch, steps_per_epoch)
  tx, schedule = opt_lib.make_optimizer(optimizer_cfg, epochs * per_epoch)
  flat = trees.flatten(variables["params"])
  frozen = {k: v for k, v in flat.items() if k != leaf}
  train = bn == "train"

  def step(kernel, frozen, opt_state, batch_stats, batch, key, count):
    x = (data.random_crop_flip(key, batch["image"]) if augment
         else data.to_float(batch["image"]))

    def loss_fn(kernel):
      params = trees.unflatten({**frozen, leaf: kernel})
      v = {"params": params, "batch_stats": batch_stats}
      if train:
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
    return kernel, opt_state, new_stats, {"loss": ce,
                                          "lr": schedule(count)}

  rep = sharding.replicated(mesh)
  step = jax.jit(step, in_shardings=(rep, rep, rep, rep,
                                     sharding.batch_sharded(mesh), rep, rep),
                 out_shardings=rep)
  # An argument, not a closure: large constants would be baked into the
  # compiled program.
  frozen = sharding.put_replicated(frozen, mesh)
  kernel = sharding.put_replicated(jnp.asarray(flat[leaf]), mesh)
  batch_stats = sharding.put_replicated(variables.get("batch_stats", {}),
                                        mesh)
  opt_state = sharding.put_replicated(
      tx.init(trees.unflatten({leaf: kernel})), mesh)
  root = jax.random.key(seed)

  def assemble(kernel, batch_stats):
    # The frozen leaves are the caller's own arrays: bit-identical.
    params = trees.unflatten({**trees.flatten(variables["params"]),
                              leaf: np.asarray(kernel)})
    return {"params": params,
            "batch_stats": jax.tree.map(np.asarray, batch_stats)}

  history, best, best_acc = [], None, -1.0
  count = 0
  for epoch in range(epochs):
    start, losses = time.time(), []
    for i in range(per_epoch):
      s = epoch * batches.steps_per_epoch + i
      key = jax.random.fold_in(root, count)
      kernel, opt_state, batch_stats, metrics = step(
          kernel, frozen, opt_state, batch_stats, batches.batch(s), key,
          jnp.int32(count))
      losses.append(metrics["loss"])
      count += 1
    current = assemble(kernel, batch_stats)
    acc = float(eval_fn(current)) if eval_fn is not None else float("nan")
    record = {"epoch": epoch + 1, "clean_acc": acc,
              "loss": float(np.mean([float(v) for v in losses]))}
    history.append(record)
    if eval_fn is None or acc > best_acc:
      best, best_acc = current, acc
    if log is not None:
      log(f"finetune epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f} "
          f"| selection clean {100 * acc:.2f}% {time.time() - start:.1f} s")
  return best, history


# ----------------------------------------------------------- interpolation


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


# ------------------------------------------------------------------- task


def _validate(config: Any) -> None:
  """Everything that can be checked before a checkpoint is read."""
  from robustjax import evaluation  # local: heavy import
  if not config.get("checkpoint_path"):
    raise ConfigError("set --config.checkpoint_path to the robust model's "
                      "training workdir or a checkpoint step folder")
  check_alphas(config.alphas)
  if config.selection not in SELECTIONS:
    raise ConfigError(f"selection='{config.selection}' is not one of "
                      f"{SELECTIONS} ('paper' selects on the test set)")
  if config.module.choice not in CHOICES:
    raise ConfigError(f"module.choice='{config.module.choice}' is not one of "
                      f"{CHOICES}")
  if config.module.choice == "path" and not config.module.path:
    raise ConfigError("module.choice='path' needs --config.module.path, e.g. "
                      "stage2/block2/conv2")
  if config.finetune.bn not in BN_MODES:
    raise ConfigError(f"finetune.bn='{config.finetune.bn}' is not one of "
                      f"{BN_MODES}")
  if not float(config.tolerance) >= 0:
    raise ConfigError(f"tolerance={config.tolerance} must be >= 0 (a "
                      "fraction: 0.001 = 0.1 percentage points)")
  if not float(config.mrc.epsilon) > 0 or int(config.mrc.epochs) < 1:
    raise ConfigError("mrc.epsilon must be > 0 and mrc.epochs >= 1")
  if int(config.finetune.epochs) < 1:
    raise ConfigError("finetune.epochs must be at least 1")
  evaluation.validate_attack(config.eval.attack)
  evaluation.validate_attack(config.mrc.attack)
  if config.get("select_attack") is not None:
    evaluation.validate_attack(config.select_attack)


def _save_variables(directory: str, variables: Mapping[str, Any], step: int,
                    meta: Mapping[str, Any]) -> None:
  from robustjax import checkpoint  # local: orbax is slow to import
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=1, async_save=False)
  ckpt.save(step, {"params": variables["params"],
                   "batch_stats": variables["batch_stats"],
                   "step": np.int32(step)}, meta)
  ckpt.close()


def run_rift(config: Any, workdir: str) -> dict[str, Any]:
  """The ``rift`` task: see configs/rift.py and docs/rift.md.

  Writes ``WORKDIR/report.json``, ``mrc.csv``, ``metrics.jsonl``,
  ``mrc.png``, ``interpolation.png``, the fine-tuned checkpoint under
  ``WORKDIR/finetuned`` and the final (interpolated) one under
  ``WORKDIR/checkpoints`` (so ``evaluate`` and ``checkpoint.load`` read it
  as the workdir's model).
  """
  from robustjax import checkpoint, evaluation, tasks  # local: heavy imports
  from robustjax.metrics import write_points, write_report
  from robustjax.weightspace import plots
  start = time.time()
  _validate(config)
  ood_cfg = tasks._ood_config(config)  # noqa: SLF001  (shared helper)
  n_test = int(config.eval.num_examples)
  restored, test, model, n_test = tasks._checkpoint_and_split(  # noqa: SLF001
      config, n_test)
  robust = {"params": restored["params"],
            "batch_stats": restored["batch_stats"]}
  tasks._check_variables_fit(model, robust, test)  # noqa: SLF001
  params = robust["params"]
  order = trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), np.zeros((1, *test.images.shape[1:]), np.float32),
      train=False))
  if config.module.choice == "path":
    check_module(params, str(config.module.path))
  ds = config.dataset
  train = data.load_split(ds.name, "train", source=ds.source,
                          data_dir=ds.get("data_dir") or None)
  if config.selection == "val":
    train, select_split = data.holdout_split(
        train, int(config.val_size), seed=int(config.get("seed", 0)))
    if select_split is None:
      raise ConfigError("selection='val' needs val_size > 0; or use "
                        "selection='paper' (test-set selection)")
  else:
    select_split = test
  n_select = int(config.select_num_examples) or len(select_split)
  n_mrc = int(config.mrc.num_examples) or len(select_split)
  for name, n in (("select_num_examples", n_select),
                  ("mrc.num_examples", n_mrc)):
    if n > len(select_split):
      raise ConfigError(f"{name}={n} but the {config.selection} split holds "
                        f"{len(select_split)} points; lower it")
  mesh = sharding.make_mesh(config.get("num_devices") or None)
  for name in ("eval.batch_size", "mrc.batch_size", "finetune.batch_size"):
    section, key = name.split(".")
    sharding.check_batch_divisible(int(config[section][key]), mesh)
  seed = int(config.get("seed", 0))
  spec = restored["meta"]["model"]
  say = logging.info

  # Validated: from here on files may be written.
  eval_bs = int(config.eval.batch_size)
  eval_step = evaluation.make_eval_step(model, config.eval.attack, mesh)
  clean_cfg = dict(config.eval.attack.to_dict(), steps=0)
  import ml_collections  # local: only for the clean-only attack config
  clean_cfg = ml_collections.ConfigDict(clean_cfg)
  clean_step = evaluation.make_eval_step(model, clean_cfg, mesh)

  select_attack = config.get("select_attack") or config.eval.attack
  select_step = evaluation.make_eval_step(model, select_attack, mesh)

  def assess(variables, split, n, label, ood=False, selecting=False):
    result = evaluation.evaluate(
        model, variables, split, mesh,
        attack_cfg=select_attack if selecting else config.eval.attack,
        batch_size=eval_bs, num_examples=n, seed=seed,
        eval_step=select_step if selecting else eval_step)
    out = {"clean_acc": result["clean_acc"], "adv_acc": result["adv_acc"]}
    line = evaluation.format_accuracies(result)
    if ood and ood_cfg is not None:
      o = tasks._evaluate_ood(model, variables, test, mesh, config,  # noqa
                              ood_cfg)
      out["ood_acc"] = o["ood_acc"]
      out["ood_corruption_mean"] = o["ood_corruption_mean"]
      line += " | " + evaluation.format_corruptions(o, ood_cfg["label"])
    say(f"{label}: {line}")
    return out

  before = assess(robust, test, n_test, "robust model (test)", ood=True)
  warnings_ = []
  if before["adv_acc"] < float(config.min_robust_acc):
    message = (f"the checkpoint is not robust: {evaluation.attack_name(config.eval.attack)} "
               f"accuracy {100 * before['adv_acc']:.2f}% < "
               f"{100 * float(config.min_robust_acc):.0f}%; RiFT assumes an "
               "adversarially trained model, so its MRC and selection rule "
               "mean little here")
    logging.warning(message)
    warnings_.append(message)

  # 1. MRC on a fixed adversarial set (selection split, eval-mode BN).
  m = config.mrc
  t0 = time.time()
  adv_x, adv_y = adversarial_set(
      model.apply, robust, select_split, mesh, num_examples=n_mrc,
      eps=float(m.attack.eps), step_size=float(m.attack.step_size),
      steps=int(m.attack.steps), batch_size=eval_bs, seed=seed)
  say(f"mrc: adversarial set of {n_mrc} {config.selection} points made in "
      f"{time.time() - t0:.1f} s")
  modules = kernel_modules(params, order)
  table = mrc(model.apply, robust, adv_x, adv_y, modules=modules,
              epsilon=float(m.epsilon), epochs=int(m.epochs), lr=float(m.lr),
              batch_size=int(m.batch_size), seed=seed, mesh=mesh, log=say)
  module = choose_module(table, str(config.module.choice),
                         path=str(config.module.path), order=order,
                         fraction=float(config.module.middle_fraction))
  say(f"mrc: lowest {table[0]['module']} ({table[0]['mrc']:.4f}), highest "
      f"{table[-1]['module']} ({table[-1]['mrc']:.4f}); fine-tuning {module}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "mrc.csv"), "w") as f:
    keys = list(table[0])
    f.write(",".join(keys) + "\n")
    for r in table:
      f.write(",".join(str(r[k]) for k in keys) + "\n")

  # 2. Fine-tune the chosen kernel on clean data; best epoch by clean acc.
  ft = config.finetune

  def select_clean(variables):
    return evaluation.evaluate(
        model, variables, select_split, mesh, attack_cfg=clean_cfg,
        batch_size=eval_bs, num_examples=n_select, seed=seed,
        eval_step=clean_step)["clean_acc"]

  finetuned, history = finetune(
      model.apply, robust, module, train, mesh, optimizer_cfg=config.optimizer,
      epochs=int(ft.epochs), batch_size=int(ft.batch_size),
      steps_per_epoch=int(ft.steps_per_epoch), bn=str(ft.bn),
      augment=bool(ft.augment), seed=seed, eval_fn=select_clean, log=say)
  best_epoch = max(history, key=lambda h: h["clean_acc"])["epoch"]
  meta = {"model": spec, "dataset": config.dataset.to_dict(),
          "rift": {"source": str(config.checkpoint_path), "module": module}}
  _save_variables(os.path.join(workdir, "finetuned"), finetuned, best_epoch,
                  meta)

  # 3. Interpolate and select alpha on the selection split.
  curve = []
  for alpha in check_alphas(config.alphas):
    v = interpolate_states(robust, finetuned, alpha)
    point = {"alpha": alpha, **assess(
        v, select_split, n_select, f"alpha {alpha:.2f} ({config.selection})",
        selecting=True)}
    curve.append(point)
  base = next((p for p in curve if p["alpha"] == 0.0), None)
  base_adv = base["adv_acc"] if base is not None else assess(
      robust, select_split, n_select, "robust model (selection)",
      selecting=True)["adv_acc"]
  chosen = select_alpha(curve, base_adv, float(config.tolerance))
  alpha = chosen["alpha"]
  say(f"chosen alpha {alpha:.2f}: {config.selection} clean "
      f"{100 * chosen['clean_acc']:.2f}% pgd {100 * chosen['adv_acc']:.2f}% "
      f"(robust model {100 * base_adv:.2f}%, tolerance "
      f"{100 * float(config.tolerance):.2f} points)")
  final = interpolate_states(robust, finetuned, alpha)
  _save_variables(os.path.join(workdir, checkpoint.LATEST_DIR), final,
                  int(round(alpha * 100)), dict(meta, rift=dict(
                      meta["rift"], alpha=alpha)))
  after = assess(final, test, n_test, "RiFT model (test)", ood=True)

  report: dict[str, Any] = {
      "checkpoint": str(config.checkpoint_path), "model": spec,
      "module": module, "module_choice": str(config.module.choice),
      "mrc": table, "finetune_history": history, "best_epoch": best_epoch,
      "selection": str(config.selection), "selection_num_examples": n_select,
      "curve": curve, "alpha": alpha, "tolerance": float(config.tolerance),
      "finetune_bn": str(ft.bn), "attack": evaluation.attack_name(
          config.eval.attack), "select_attack": evaluation.attack_name(
          select_attack), "test_num_examples": n_test,
      "warnings": warnings_}
  for key, value in before.items():
    report[f"before_{key}"] = value
  for key, value in after.items():
    report[f"after_{key}"] = value
  report["wall_time_s"] = round(time.time() - start, 1)
  write_points(workdir, curve)
  write_report(workdir, report)
  if jax.process_index() == 0:
    values = {r["module"]: r["mrc"] for r in sorted(
        table, key=lambda r: order.index(r["module"]))}
    plots.plot_layer_values(values, ylabel="MRC (robust loss increase)",
                            title=f"MRC, eps {float(m.epsilon):g}",
                            highlight=[module],
                            path=os.path.join(workdir, "mrc.png"))
    plots.plot_curve(curve, title=f"RiFT {module}: robust (0) -> fine-tuned "
                     f"(1), alpha* {alpha:.2f}",
                     path=os.path.join(workdir, "interpolation.png"))
  say(f"before: clean {100 * before['clean_acc']:.2f}% pgd "
      f"{100 * before['adv_acc']:.2f}% | after: clean "
      f"{100 * after['clean_acc']:.2f}% pgd {100 * after['adv_acc']:.2f}%")
  return report
