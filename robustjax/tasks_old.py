"""The tasks ``launch.py`` can run, by ``config.task``.

``train``     train_and_evaluate(config, workdir): training + evaluation.
``evaluate``  clean and PGD accuracy of a saved checkpoint (no model config
              needed: the checkpoint names its model), and optionally its
              accuracy under CIFAR-10-C corruptions (``config.ood``).
``interpolate``  the curve and loss barrier between two checkpoints
              (robustjax/weightspace/task.py).
``rws_finetune``, ``rws``  robust weight signatures: fine-tune from theta_pre;
              extract, patch and analyse (robustjax/rws/task.py).
``rift``      RiFT fine-tuning of a robust checkpoint (robustjax/rift.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging

from robustjax import checkpoint, data, evaluation, sharding
from robustjax.errors import ConfigError
from robustjax.metrics import MetricWriter, write_report

TaskFn = Callable[[Any, str], dict[str, Any]]
_TASKS: dict[str, TaskFn] = {}


def register(name: str) -> Callable[[TaskFn], TaskFn]:
  def wrap(fn: TaskFn) -> TaskFn:
    _TASKS[name] = fn
    return fn
  return wrap


def available_tasks() -> list[str]:
  return sorted(_TASKS)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs ``config.task`` (default ``train``) in ``workdir``."""
  name = config.get("task", "train")
  if name not in _TASKS:
    raise ConfigError(f"unknown task '{name}'; choose one of: "
                      f"{', '.join(available_tasks())}")
  return _TASKS[name](config, workdir)


@register("train")
def _train(config: Any, workdir: str) -> dict[str, Any]:
  from robustjax.training import train_and_evaluate  # local: heavy import
  return train_and_evaluate(config, workdir)


@register("evaluate")
def evaluate_checkpoint(config: Any, workdir: str) -> dict[str, Any]:
  """Clean and adversarial accuracy of ``config.checkpoint_path``.

  Config keys: ``checkpoint_path`` (a workdir or step folder), ``step``
  (0 = newest), ``best`` (read the best checkpoint), ``dataset`` (``name,
  source, data_dir, split``), ``eval`` (``num_examples`` (0 = all),
  ``batch_size``, ``attack``), ``seed``, ``ood`` (``corruptions``: a list
  name or ``none``, ``severities``, ``source``, ``data_dir``,
  ``num_examples``, ``batch_size``). Writes ``WORKDIR/report.json``.
  """
  start = time.time()
  if not config.get("checkpoint_path"):
    raise ConfigError("set --config.checkpoint_path to a training workdir or "
                      "a checkpoint step folder")
  evaluation.validate_attack(config.eval.attack)
  ood_cfg = _ood_config(config)
  restored, split, model, _ = _checkpoint_and_split(
      config, int(config.eval.num_examples))
  spec, ds = restored["meta"]["model"], config.dataset
  mesh = sharding.make_mesh(config.get("num_devices") or None)
  variables = {"params": restored["params"],
               "batch_stats": restored["batch_stats"]}
  _check_variables_fit(model, variables, split)
  result = evaluation.evaluate(
      model, variables, split, mesh, attack_cfg=config.eval.attack,
      batch_size=int(config.eval.batch_size),
      num_examples=int(config.eval.num_examples) or None,
      seed=int(config.get("seed", 0)))
  logging.info("%s: %s", config.checkpoint_path,
               evaluation.format_accuracies(result))
  report = dict(result, checkpoint=str(config.checkpoint_path),
                checkpoint_step=restored["step"], model=spec,
                split=ds.get("split", "test"), eps=float(config.eval.attack.eps),
                wall_time_s=round(time.time() - start, 1))
  if ood_cfg is not None:
    ood = _evaluate_ood(model, variables, split, mesh, config, ood_cfg)
    logging.info("%s: %s", config.checkpoint_path, evaluation.format_corruptions(
        ood, ood_cfg["label"]))
    report.update(ood, ood_list=ood_cfg["label"],
                  wall_time_s=round(time.time() - start, 1))
    result = dict(result, ood_acc=ood["ood_acc"])
  writer = MetricWriter(workdir)
  writer.write(restored["step"], {k: v for k, v in result.items()
                                  if k != "attack"})
  writer.close()
  write_report(workdir, report)
  return report


@register("autoattack")
def autoattack_checkpoint(config: Any, workdir: str) -> dict[str, Any]:
  """AutoAttack on the first ``config.num_examples`` points of a split.

  Config keys: ``checkpoint_path``, ``step``, ``best``, ``dataset``
  (``name, source, data_dir, split``), ``num_examples`` (0 = all),
  ``batch_size``, ``chunk_size``, ``autoattack`` (the fields of
  ``robustjax.attacks.autoattack.AutoAttackConfig``; ``attacks`` as a comma
  list, ``eot_iter=0`` for the version's own). Everything is validated
  before any attack runs; ``WORKDIR/report.json`` is written at the end.
  """
  from robustjax.attacks import autoattack  # local: heavy import
  start = time.time()
  aa = config.autoattack
  overrides = dict(
      eps=float(aa.eps), norm=str(aa.norm),
      attacks=tuple(a.strip() for a in str(aa.get("attacks", "")).split(",")
                    if a.strip()),
      apgd_steps=int(aa.apgd_steps), apgd_restarts=int(aa.apgd_restarts),
      n_target_classes=int(aa.n_target_classes), fab_steps=int(aa.fab_steps),
      square_queries=int(aa.square_queries), seed=int(aa.seed))
  if int(aa.get("eot_iter", 0)) > 0:
    overrides["eot_iter"] = int(aa.eot_iter)
  aa_config = autoattack.config_for(str(aa.version), **overrides)
  restored, split, model, num_examples = _checkpoint_and_split(
      config, int(config.get("num_examples", 0)))
  mesh = sharding.make_mesh(config.get("num_devices") or None)
  variables = {"params": restored["params"],
               "batch_stats": restored["batch_stats"]}
  _check_variables_fit(model, variables, split)

  def progress(row):
    logging.info("autoattack %s: robust %.2f%% (%d/%d) %.1f s", row["attack"],
                 100 * row["robust_acc"], row["robust_points"], num_examples,
                 row["seconds"])

  result = autoattack.run_autoattack(
      lambda v, x, k: model.apply(v, x, train=False), variables,
      split.images[:num_examples], split.labels[:num_examples], aa_config,
      mesh=mesh, batch_size=int(config.batch_size),
      chunk_size=int(config.get("chunk_size", 10)), on_attack=progress)
  logging.info("%s: clean %.2f%% | autoattack %.2f%% (n=%d)",
               config.checkpoint_path, 100 * result.clean_acc,
               100 * result.robust_acc, num_examples)
  report = dict(result.summary(aa_config),
                checkpoint=str(config.checkpoint_path),
                checkpoint_step=restored["step"],
                model=restored["meta"]["model"],
                dataset=str(config.dataset.name),
                split=config.dataset.get("split", "test"),
                seed=aa_config.seed, wall_time_s=round(time.time() - start, 1))
  writer = MetricWriter(workdir)
  writer.write(restored["step"], {"clean_acc": result.clean_acc,
                                  "autoattack_acc": result.robust_acc})
  writer.close()
  write_report(workdir, report)
  return report


def _checkpoint_and_split(config: Any, num_examples: int):
  """The checkpoint, the split, the model and the number of points to use.

  ``num_examples`` 0 means the whole split. Raises ConfigError (before any
  work) for a missing checkpoint path, a dataset whose class count differs
  from the model's, or more points than the split holds.
  """
  from robustjax.training.loop import build_model  # local: heavy import
  if not config.get("checkpoint_path"):
    raise ConfigError("set --config.checkpoint_path to a training workdir or "
                      "a checkpoint step folder")
  step = int(config.get("step", 0)) or None
  restored = checkpoint.load(config.checkpoint_path, step,
                             best=bool(config.get("best", False)))
  spec = restored["meta"]["model"]
  ds = config.dataset
  split = data.load_split(ds.name, ds.get("split", "test"), source=ds.source,
                          data_dir=ds.get("data_dir") or None)
  # A model trained on a class subset (dataset.classes, e.g. RWS transfer's
  # "5-9") is evaluated on the classes it was trained on, relabelled the same
  # way, unless the config names classes itself.
  trained = restored["meta"].get("dataset", {})
  classes = ds.get("classes", "") or (
      trained.get("classes", "") if trained.get("name") == ds.name else "")
  split = data.sources.subset_from_config(split, {"classes": classes})
  if split.num_classes != spec["num_classes"]:
    raise ConfigError(
        f"the checkpoint's model has {spec['num_classes']} classes but "
        f"dataset '{ds.name}' has {split.num_classes}; evaluate it on the "
        "dataset it was trained on")
  n = num_examples or len(split)
  if not 0 < n <= len(split):
    raise ConfigError(f"num_examples={n} but the {ds.name} "
                      f"{ds.get('split', 'test')} split holds {len(split)} "
                      "points; ask for at most that many (0 = all)")
  return restored, split, build_model(spec), n


def _check_variables_fit(model, variables, split) -> None:
  """ConfigError naming the first parameter whose path or shape differs."""
  import jax  # local: keeps `launch.py --help` light
  import numpy as np
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         np.zeros((1,) + split.images.shape[1:], np.float32),
                         train=False))
  want = {jax.tree_util.keystr(p): v.shape for p, v in
          jax.tree_util.tree_leaves_with_path(dict(expected))}
  have = {jax.tree_util.keystr(p): np.shape(v) for p, v in
          jax.tree_util.tree_leaves_with_path(variables)}
  for path in sorted(set(want) | set(have)):
    if want.get(path) != have.get(path):
      raise ConfigError(
          f"the checkpoint does not fit its model: {path} is "
          f"{have.get(path, 'missing')} in the checkpoint but the model "
          f"expects {want.get(path, 'nothing')}; was the checkpoint written "
          "by a different model?")


@register("rift")
def _rift(config: Any, workdir: str) -> dict[str, Any]:
  from robustjax.rift import run_rift  # local: heavy import
  return run_rift(config, workdir)


@register("interpolate")
def _interpolate(config: Any, workdir: str) -> dict[str, Any]:
  from robustjax.weightspace.task import run_interpolate  # local: heavy import
  return run_interpolate(config, workdir)


@register("rws_finetune")
def _rws_finetune(config: Any, workdir: str) -> dict[str, Any]:
  from robustjax.rws.task import run_finetune  # local: heavy import
  return run_finetune(config, workdir)


@register("rws")
def _rws(config: Any, workdir: str) -> dict[str, Any]:
  from robustjax.rws.task import run_rws  # local: heavy import
  return run_rws(config, workdir)


def _ood_config(config: Any) -> dict[str, Any] | None:
  """The checked ``config.ood`` block, or None when OOD evaluation is off."""
  from robustjax.data import corruptions  # local: keeps tasks import light
  ood = config.get("ood")
  if ood is None or str(ood.get("corruptions", "none")) in ("", "none"):
    return None
  names = corruptions.resolve(str(ood.corruptions))
  severities = tuple(int(s) for s in ood.get("severities", (1, 2, 3, 4, 5)))
  for s in severities:
    corruptions.check_severity(s)
  source = ood.get("source", "generated")
  if source not in ("generated", "tfds"):
    raise ConfigError(f"ood.source={source!r}; use 'generated' (corrupt on "
                      "the fly) or 'tfds' (the official cifar10_corrupted "
                      "files)")
  label = str(ood.corruptions) if str(ood.corruptions) in \
      corruptions.NAMED_LISTS else "custom"
  return {"names": names, "severities": severities, "source": source,
          "label": label}


def _evaluate_ood(model, variables, split, mesh, config, ood_cfg):
  from robustjax.data import corrupted  # local: keeps tasks import light
  ood = config.ood
  loader = None
  if ood_cfg["source"] == "tfds":
    if config.dataset.name != "cifar10":
      raise ConfigError("ood.source='tfds' reads cifar10_corrupted, which "
                        "fits cifar10 models only; use ood.source='generated'")
    data_dir = ood.get("data_dir") or None
    loader = lambda name, sev: corrupted.load_cifar10_corrupted(  # noqa: E731
        name, sev, data_dir)
  n = int(ood.get("num_examples", 0)) or int(config.eval.num_examples) or None
  batch_size = int(ood.get("batch_size", 0)) or int(config.eval.batch_size)
  return evaluation.evaluate_corruptions(
      model, variables, split, mesh, corruptions=ood_cfg["names"],
      severities=ood_cfg["severities"], batch_size=batch_size,
      num_examples=n, seed=int(config.get("seed", 0)),
      corrupted_splits=loader)
