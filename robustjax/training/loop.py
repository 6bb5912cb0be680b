"""``train_and_evaluate(config, workdir)``: the one training loop.

Reachable from ``launch.py`` and importable from notebooks. In order:
validate the config (nothing is written before it passes), build the mesh,
model, data and optimizer, resume from ``WORKDIR/checkpoints`` if a
checkpoint is there (refusing one of a different model), train with periodic
logging, evaluation and checkpoints, then evaluate on the test split and
write ``WORKDIR/report.json``.

On SIGTERM or SIGINT (or, in a multi-process run, at JAX's preemption sync
point) the loop finishes the step in flight, writes a checkpoint at that
step, waits until it is durable and raises ``errors.Preempted``; rerunning
resumes from that step. A loss that becomes non-finite stops the run with a
``ConfigError`` naming the step and the last good checkpoint, after the
pending saves are durable; the metrics are checked at every save too, so no
checkpoint is written at a step whose loss or gradient norm is non-finite.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import (attacks, checkpoint, data, evaluation, models,
                       preemption, sharding)
from robustjax.data import corrupted
from robustjax.errors import ConfigError, Preempted
from robustjax.metrics import MetricWriter, write_report
from robustjax.training import objectives, optimizer, step as step_lib


def _num_steps(config: Any, steps_per_epoch: int) -> int:
  if int(config.get("num_steps", 0)) > 0:
    return int(config.num_steps)
  steps = int(round(float(config.num_epochs) * steps_per_epoch))
  if steps < 1:
    raise ConfigError("set config.num_steps > 0 or config.num_epochs > 0")
  return steps


def corruption_spec(config: Any) -> corrupted.CorruptionSpec:
  """``config.dataset.corruption`` as a checked ``CorruptionSpec``."""
  block = config.dataset.get("corruption")
  if block is None:
    return corrupted.CorruptionSpec()
  block = dict(block)
  block["severities"] = tuple(int(s) for s in block.get("severities", (5,)))
  return corrupted.CorruptionSpec(**block).validated()


def load_data(config: Any):
  """(train, validation or None, test) splits named by ``config.dataset``."""
  ds = config.dataset
  kwargs = dict(source=ds.source, data_dir=ds.get("data_dir") or None)
  # dataset.classes: only those classes, relabelled 0..K-1 (before the
  # validation holdout, so validation holds the same classes).
  classes = ds.get("classes", "")
  # The same function rebuilds these splits from a checkpoint's saved
  # dataset block (RiFT selects on exactly the rows a run held out).
  train, val = data.train_val(ds.name, classes=classes,
                              val_size=int(ds.get("val_size", 0)),
                              val_seed=int(ds.get("val_seed", 0)), **kwargs)
  test = data.subset(data.load_split(ds.name, "test", **kwargs), classes)
  # Corrupted copies (dataset.corruption, e.g. RWS's per-corruption models).
  spec = corruption_spec(config)
  train = spec.apply(train, "train")
  val = spec.apply(val, "val") if val is not None else None
  test = spec.apply(test, "test")
  return train, val, test


def dataset_meta(dataset_cfg: Any) -> dict[str, Any]:
  """The ``dataset`` block a checkpoint saves, with ``val_size`` and
  ``val_seed`` always present (what ``load_data`` held out: tasks that must
  not touch the training rows, such as RiFT's selection, read them)."""
  return dict(dataset_cfg.to_dict(),
              val_size=int(dataset_cfg.get("val_size", 0) or 0),
              val_seed=int(dataset_cfg.get("val_seed", 0) or 0))


def _check_same_model(meta: dict[str, Any], spec: dict[str, Any],
                      workdir: str) -> None:
  saved = meta.get("model", {})
  # Specs saved with fewer keys name their defaults: compare full specs.
  if not saved or models.full_spec(saved) != models.full_spec(spec):
    raise ConfigError(
        f"workdir {workdir} holds a checkpoint of model {saved} but the config "
        f"asks for {spec}; use a new --workdir (or delete the old one)")


def _non_finite(metrics: dict[str, float]) -> list[str]:
  return [k for k, v in metrics.items() if not np.isfinite(v)]


def _diverged(bad: list[str], step: int, config: Any,
              ckpt: checkpoint.Checkpointer) -> ConfigError:
  """The one-line error for a non-finite loss, once pending saves are
  durable: the step, the last good checkpoint and what to change."""
  ckpt.wait()
  last = ckpt.latest_step()
  where = (f"the last good checkpoint is step {last} "
           f"({os.path.join(ckpt.directory, str(last))}), from which the same "
           "command resumes" if last is not None else
           "no checkpoint was written before it")
  return ConfigError(
      f"{', '.join(bad)} became non-finite (NaN or inf) at step {step}; "
      f"{where}: lower the learning rate (--config.optimizer.lr="
      f"{float(config.optimizer.lr):g} now) or check the data and the "
      "objective's settings")


def validate(config: Any) -> None:
  """Checks names and ranges before any file is written."""
  for section in ("model", "dataset", "objective", "optimizer", "eval",
                  "checkpoint"):
    if section not in config:
      raise ConfigError(f"config has no '{section}' section; start from "
                        "configs/quickstart.py")
  if config.model.name not in models.available_models():
    models.create_model(config.model.name)  # raises the one-line error
  models.compute_dtype(config.model.get("dtype", "float32"))
  models.compute_dtype(config.eval.get("dtype", "float32"))
  if config.dataset.name not in data.DATASETS:
    data.load_split(config.dataset.name, "test",
                    source=config.dataset.source)  # raises
  corruption_spec(config)
  objectives.validate(config.objective)
  attacks.build(config.eval.attack)
  if config.get("final_eval") is not None:
    attacks.build(config.final_eval.attack)
  optimizer.make_schedule(config.optimizer, 10)
  sharding.validate_strategy(_strategy(config))
  if _fsdp_size(config) and _strategy(config) != "fsdp":
    raise ConfigError(f"sharding.fsdp_size={_fsdp_size(config)} only applies "
                      "to sharding.strategy=fsdp; set the strategy or drop it")
  if int(config.batch_size) < 1:
    raise ConfigError(f"batch_size={config.batch_size} must be positive")


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and checkpoints; returns the final report.

  Writes ``WORKDIR/metrics.jsonl`` (one record per logged step and per
  evaluation), TensorBoard events under ``WORKDIR/tensorboard``,
  checkpoints under ``WORKDIR/checkpoints`` (and the best one under
  ``WORKDIR/best``) and ``WORKDIR/report.json``.
  """
  start_time = time.time()
  validate(config)
  train_split, val_split, test_split = load_data(config)
  mesh = sharding.make_mesh(config.get("num_devices") or None,
                            fsdp_size=_fsdp_size(config))
  sharding.check_batch_divisible(int(config.batch_size), mesh)
  spec = models.model_spec(config.model.name, config.model.width,
                           train_split.num_classes)
  # Mixed precision (model.dtype=bfloat16) speeds up the training step;
  # evaluation has its own dtype (float32 by default) so reported accuracies
  # are computed at full precision unless asked otherwise.
  model = models.build_model(spec, config.model.get("dtype", "float32"))
  eval_model = models.build_model(spec, config.eval.get("dtype", "float32"))
  batches = data.TrainBatches(train_split, int(config.batch_size),
                              int(config.seed), mesh)
  total_steps = _num_steps(config, batches.steps_per_epoch)
  tx, schedule = optimizer.make_optimizer(config.optimizer, total_steps)
  objective = objectives.make_objective(config.objective, model)

  ckpt_dir = os.path.join(workdir, checkpoint.LATEST_DIR)
  if checkpoint.has_checkpoint(ckpt_dir):
    _check_same_model(checkpoint.read_meta(
        workdir, fallback=checkpoint.RESUME_EARLIER), spec, workdir)

  root_key = jax.random.key(int(config.seed))
  # Three streams (init, train, one reserved): the split is part of a run's
  # definition, since every augmentation and attack draw derives from it.
  init_key, train_key, _ = jax.random.split(root_key, 3)
  image_shape = tuple(train_split.images.shape[1:])
  init = lambda k: step_lib.init_state(model, tx, k, image_shape)  # noqa: E731
  # The state's shardings (sharding.strategy) come from its shapes alone, so
  # the state is created, restored and updated directly in its sharded form.
  abstract = jax.eval_shape(init, init_key)
  state_sharding = sharding.state_shardings(
      abstract, mesh, _strategy(config), min_size=_fsdp_min_size(config))
  fsdp = _strategy(config) == "fsdp"
  init_fn = jax.jit(init, out_shardings=state_sharding)
  ckpt_cfg = config.checkpoint
  async_save = bool(ckpt_cfg.get("async_save", True))
  ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=int(
      ckpt_cfg.max_to_keep), async_save=async_save)
  best_metric = ckpt_cfg.get("best_metric") or None
  best = None
  if best_metric:
    best = checkpoint.Checkpointer(
        os.path.join(workdir, checkpoint.BEST_DIR), max_to_keep=1,
        best_metric=best_metric, async_save=async_save)

  start_step = ckpt.latest_step()
  if start_step is not None:
    target = sharding.with_shardings(abstract.to_dict(),
                                     state_sharding.to_dict())
    state = step_lib.TrainState.from_dict(ckpt.restore(target, start_step))
    logging.info("resumed from step %d in %s", start_step, ckpt_dir)
  else:
    state = init_fn(init_key)
    start_step = 0
  meta = {"model": spec, "dataset": dataset_meta(config.dataset),
          "objective": config.objective.to_dict(),
          "config": config.to_json_best_effort()}

  writer = MetricWriter(workdir, resume_step=start_step)
  train_step = step_lib.make_train_step(
      objective, tx, schedule, mesh,
      augment=bool(config.dataset.get("augment", True)),
      state_sharding=state_sharding)
  eval_attack = attacks.build(config.eval.attack)
  eval_step = evaluation.make_eval_step(eval_model, eval_attack, mesh)
  train_key = sharding.put_replicated(train_key, mesh)
  eval_split = val_split if val_split is not None else test_split
  eval_name = "val" if val_split is not None else "test"

  def run_eval(step: int) -> dict[str, Any]:
    result = evaluation.evaluate(
        eval_model, _eval_variables(state, mesh, fsdp), eval_split, mesh,
        attack=eval_attack, batch_size=int(config.eval.batch_size),
        num_examples=int(config.eval.num_examples) or None,
        seed=int(config.seed), eval_step=eval_step)
    _say(progress, f"step {step} {eval_name}: "
         f"{evaluation.format_accuracies(result)}")
    writer.write(step, {f"{eval_name}/{k}": v for k, v in result.items()
                        if k != "attack"})
    return result

  log_every = max(1, int(config.log_every))
  eval_every = int(config.eval.every_steps)
  ckpt_every = int(ckpt_cfg.every_steps)
  progress = _progress(start_step, total_steps, config)
  last_metrics = None
  multi_process = jax.process_count() > 1
  with preemption.StopRequests(multi_process) as stop:
    for step, batch in batches.iterate(start_step, total_steps - start_step):
      state, metrics = train_step(state, batch, train_key)
      done = step + 1
      # Every host must reach the same answer at the same step: a local
      # signal in one process, JAX's preemption sync point across several.
      stopping = (ckpt.reached_preemption(done) if multi_process
                  else stop.requested())
      save = done % ckpt_every == 0 or done == total_steps or stopping
      if done % log_every == 0 or done == total_steps or save:
        # Also at every save: a step with a non-finite loss or gradient
        # norm is never checkpointed.
        step_metrics = {k: float(v) for k, v in metrics.items()}
        bad = _non_finite(step_metrics)
        if bad:
          progress.close()
          raise _diverged(bad, done, config, ckpt)
      if done % log_every == 0 or done == total_steps:
        last_metrics = step_metrics
        writer.write(done, {f"train/{k}": v for k, v in last_metrics.items()})
        progress.set_postfix({k: f"{v:.3g}" for k, v in last_metrics.items()
                              if k in ("loss", "accuracy", "adv_accuracy")})
      progress.update(1)
      if eval_every and (done % eval_every == 0 or done == total_steps):
        result = run_eval(done)
        if best is not None:
          best.save(done, state.to_dict(), meta,
                    metrics={best_metric: result[best_metric]})
      if save:
        ckpt.save(done, state.to_dict(), meta)
      if stopping and done < total_steps:
        progress.close()
        ckpt.close()
        if best is not None:
          best.close()
        writer.close()
        raise Preempted(done)
  progress.close()
  ckpt.close()
  if best is not None:
    best.close()

  report: dict[str, Any] = {"workdir": os.path.abspath(workdir),
                            "steps": total_steps, "model": spec,
                            "objective": config.objective.name}
  if last_metrics is not None:
    report.update({f"train_{k}": v for k, v in last_metrics.items()})
  final = config.get("final_eval")
  if final is not None:
    result = evaluation.evaluate(
        eval_model, _eval_variables(state, mesh, fsdp), test_split, mesh,
        attack=attacks.build(final.attack),
        batch_size=int(final.batch_size),
        num_examples=int(final.num_examples) or None, seed=int(config.seed))
    _say(None, f"final test: {evaluation.format_accuracies(result)}")
    report.update({f"test_{k}": v for k, v in result.items()})
    writer.write(total_steps, {f"final_test/{k}": v for k, v in result.items()
                               if k != "attack"})
  writer.close()
  report["wall_time_s"] = round(time.time() - start_time, 1)
  write_report(workdir, report)
  return report


def _strategy(config: Any) -> str:
  """``config.sharding.strategy`` (``dp`` when the config has no block)."""
  return str(config.get("sharding", {}).get("strategy", "dp"))


def _fsdp_size(config: Any) -> int:
  """``config.sharding.fsdp_size``: devices per fsdp group (0 = all)."""
  return int(config.get("sharding", {}).get("fsdp_size", 0))


def _fsdp_min_size(config: Any) -> int:
  """``config.sharding.min_size``: smaller fsdp leaves stay replicated."""
  return int(config.get("sharding", {}).get("min_size",
                                             sharding.FSDP_MIN_SIZE))


def _eval_variables(state: step_lib.TrainState, mesh, fsdp: bool
                    ) -> dict[str, Any]:
  """The model variables for evaluation: replicated (a gathered copy when
  the state is fsdp-sharded; the evaluation step takes replicated ones)."""
  variables = state.variables()
  return sharding.gather(variables, mesh) if fsdp else variables


def _say(progress, message: str) -> None:
  """A result line: above the progress bar when it is shown, else logged."""
  if progress is not None and not progress.disable:
    progress.write(message, file=sys.stderr)
  else:
    logging.info(message)


def _progress(start: int, total: int, config: Any):
  from tqdm import tqdm  # local: only the loop needs it
  show = bool(config.get("progress_bar", True)) and jax.process_index() == 0
  return tqdm(total=total, initial=start, disable=not show, file=sys.stderr,
              dynamic_ncols=True, desc="train", unit="step")
