"""The ``rift`` task: RiFT fine-tuning of a robust checkpoint
(configs/rift.py, docs/rift.md).

MRC of every conv/dense kernel on a fixed adversarial set, the module to
fine-tune, fine-tuning of that kernel on the checkpoint's own training rows,
then the alpha curve from the robust (0) to the fine-tuned (1) model and the
chosen alpha. Selection (the MRC set, the best epoch and alpha) uses the
rows the checkpoint's training run held out (``selection='val'``, the
default; its saved ``dataset.val_size``/``val_seed``) or the test split
(``'paper'``, as the reference).

Writes ``WORKDIR/report.json``, ``mrc.csv``, ``metrics.jsonl``,
``mrc.png``, ``interpolation.png``, the fine-tuned checkpoint under
``WORKDIR/finetuned`` and the final (interpolated) one under
``WORKDIR/checkpoints`` (so ``evaluate`` and ``checkpoint.load`` read it
as the workdir's model).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
from absl import logging

from robustjax import checkpoint, data, evaluation, rift, sharding
from robustjax.errors import ConfigError
from robustjax.metrics import write_points, write_report
from robustjax.tasks import common
from robustjax.weightspace import batchnorm, plots

SELECTIONS = ("val", "paper")


def _validate(config: Any) -> dict[str, Any]:
  """Everything checkable before a checkpoint is read; the attacks."""
  if not config.get("checkpoint_path"):
    raise ConfigError("set --config.checkpoint_path to the robust model's "
                      "training workdir or a checkpoint step folder")
  rift.check_alphas(config.alphas)
  if config.selection not in SELECTIONS:
    raise ConfigError(f"selection='{config.selection}' is not one of "
                      f"{SELECTIONS} ('paper' selects on the test set)")
  if config.module.choice not in rift.CHOICES:
    raise ConfigError(f"module.choice='{config.module.choice}' is not one of "
                      f"{rift.CHOICES}")
  if config.module.choice == "path" and not config.module.path:
    raise ConfigError("module.choice='path' needs --config.module.path, e.g. "
                      "stage2/block2/conv2")
  batchnorm.check_mode(str(config.finetune.bn), batchnorm.FINETUNE_MODES,
                       "finetune.bn")
  if not float(config.tolerance) >= 0:
    raise ConfigError(f"tolerance={config.tolerance} must be >= 0 (a "
                      "fraction: 0.001 = 0.1 percentage points)")
  if not float(config.mrc.epsilon) > 0 or int(config.mrc.epochs) < 1:
    raise ConfigError("mrc.epsilon must be > 0 and mrc.epochs >= 1")
  rift.ascent_plan(1, steps_per_epoch=int(config.mrc.get("steps_per_epoch",
                                                         0)),
                   batch_size=int(config.mrc.get("batch_size", 0)))
  if int(config.get("val_size", 0) or 0) < 0:
    raise ConfigError(f"val_size={config.val_size} must be >= 0 (0 = the "
                      "checkpoint's own held-out split, N = check it is N)")
  if int(config.finetune.epochs) < 1:
    raise ConfigError("finetune.epochs must be at least 1")
  common.ood_config(config)
  eval_attack = common.attack(config.eval.attack, "eval.attack")
  return {"eval": eval_attack,
          "mrc": common.attack(config.mrc.attack, "mrc.attack"),
          "select": common.attack(config.select_attack, "select_attack")
                    if config.get("select_attack") is not None
                    else eval_attack}


@dataclasses.dataclass
class _Run:
  """A validated run: the checkpoint, its splits and sizes."""
  ckpt: common.Restored
  order: list[str]
  trained_ds: dict[str, Any]
  train: data.ArraySplit
  select_split: data.ArraySplit
  held_out: data.ArraySplit | None
  n_select: int
  n_mrc: int
  mesh: Any
  seed: int


def _prepare(config: Any) -> _Run:
  """Restores the checkpoint and its splits; checks every size."""
  ckpt = common.restore(config, int(config.eval.num_examples))
  order = common.layer_order(ckpt.model, ckpt.split.images.shape[1:])
  if config.module.choice == "path":
    rift.check_module(ckpt.variables["params"], str(config.module.path))
  # Fine-tuning trains on the checkpoint's own training rows; 'val' selects
  # on the rows its training run held out (never trained on).
  trained_ds, train, held_out = common.checkpoint_splits(
      ckpt.meta, config.dataset, require_holdout=config.selection == "val",
      val_size=int(config.get("val_size", 0) or 0),
      path=str(config.checkpoint_path))
  select_split = held_out if config.selection == "val" else ckpt.split
  n_select = int(config.select_num_examples) or len(select_split)
  n_mrc = int(config.mrc.num_examples) or len(select_split)
  for name, n in (("select_num_examples", n_select),
                  ("mrc.num_examples", n_mrc)):
    if n > len(select_split):
      raise ConfigError(f"{name}={n} but the {config.selection} split holds "
                        f"{len(select_split)} points; lower it")
  mesh = common.mesh_of(config)
  sharding.check_batch_divisible(int(config.eval.batch_size), mesh)
  sharding.check_batch_divisible(int(config.finetune.batch_size), mesh)
  if int(config.mrc.get("batch_size", 0)) > 0:
    # mrc.batch_size 0: derived from mrc.steps_per_epoch, rounded to fit.
    sharding.check_batch_divisible(int(config.mrc.batch_size), mesh)
  return _Run(ckpt, order, trained_ds, train, select_split, held_out,
              n_select, n_mrc, mesh, int(config.get("seed", 0)))


class _Assessor:
  """Clean and attacked accuracy (and OOD) of variables, with one compiled
  step per attack, logged one line each."""

  def __init__(self, config: Any, run: _Run, attacks: dict[str, Any]):
    self.config, self.run, self.attacks = config, run, attacks
    self.ood_cfg = common.ood_config(config)
    model = run.ckpt.model
    self.steps = {kind: evaluation.make_eval_step(model, attacks[kind],
                                                  run.mesh)
                  for kind in ("eval", "select")}

  def __call__(self, variables, split, n: int, label: str, *,
               ood: bool = False, kind: str = "eval") -> dict[str, Any]:
    run = self.run
    result = evaluation.evaluate(
        run.ckpt.model, variables, split, run.mesh,
        attack=self.attacks[kind],
        batch_size=int(self.config.eval.batch_size), num_examples=n,
        seed=run.seed, eval_step=self.steps[kind])
    out = {"clean_acc": result["clean_acc"], "adv_acc": result["adv_acc"]}
    line = evaluation.format_accuracies(result)
    if ood and self.ood_cfg is not None:
      o = common.evaluate_ood(run.ckpt.model, variables, run.ckpt.split,
                              run.mesh, self.config, self.ood_cfg)
      out["ood_acc"] = o["ood_acc"]
      out["ood_corruption_mean"] = o["ood_corruption_mean"]
      line += " | " + evaluation.format_corruptions(o, self.ood_cfg["label"])
    logging.info("%s: %s", label, line)
    return out


def _warnings(config: Any, run: _Run, before: dict[str, Any],
              attack_label: str) -> list[str]:
  """Conditions under which RiFT's numbers mean little, logged too."""
  messages = []
  if before["adv_acc"] < float(config.min_robust_acc):
    messages.append(
        f"the checkpoint is not robust: {attack_label} accuracy "
        f"{100 * before['adv_acc']:.2f}% < "
        f"{100 * float(config.min_robust_acc):.0f}%; RiFT assumes an "
        "adversarially trained model, so its MRC and selection rule mean "
        "little here")
  source_rift = run.ckpt.meta.get("rift")
  if source_rift and config.selection == "val":
    # Its rows are still unseen by training, but the earlier run chose its
    # fine-tuned epoch and alpha on them.
    messages.append(
        f"the checkpoint is itself a RiFT output (module "
        f"{source_rift.get('module')}): its fine-tuned epoch and alpha were "
        f"already chosen on the {len(run.held_out)} held-out points, so "
        "selecting on them again is not independent of them")
  for message in messages:
    logging.warning(message)
  return messages


def _mrc_stage(config: Any, run: _Run, attack, workdir: str
               ) -> tuple[list[dict[str, Any]], str]:
  """MRC on a fixed adversarial set; the chosen module; ``mrc.csv``."""
  m, ckpt = config.mrc, run.ckpt
  t0 = time.time()
  adv_x, adv_y = rift.adversarial_set(
      ckpt.model.apply, ckpt.variables, run.select_split, run.mesh,
      attack=attack, num_examples=run.n_mrc,
      batch_size=int(config.eval.batch_size), seed=run.seed)
  logging.info("mrc: adversarial set of %d %s points made in %.1f s",
               run.n_mrc, config.selection, time.time() - t0)
  table = rift.mrc(
      ckpt.model.apply, ckpt.variables, adv_x, adv_y,
      modules=rift.kernel_modules(ckpt.variables["params"], run.order),
      epsilon=float(m.epsilon), epochs=int(m.epochs), lr=float(m.lr),
      steps_per_epoch=int(m.get("steps_per_epoch", 0)),
      batch_size=int(m.get("batch_size", 0)), seed=run.seed, mesh=run.mesh,
      log=logging.info)
  module = rift.choose_module(table, str(config.module.choice),
                              path=str(config.module.path), order=run.order,
                              fraction=float(config.module.middle_fraction))
  logging.info("mrc: lowest %s (%.4f), highest %s (%.4f); fine-tuning %s",
               table[0]["module"], table[0]["mrc"], table[-1]["module"],
               table[-1]["mrc"], module)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "mrc.csv"), "w") as f:
    keys = list(table[0])
    f.write(",".join(keys) + "\n")
    for r in table:
      f.write(",".join(str(r[k]) for k in keys) + "\n")
  return table, module


def _finetune_stage(config: Any, run: _Run, module: str):
  """The fine-tuned model (best epoch by clean selection accuracy) and its
  history."""
  from robustjax.training import optimizer  # local: heavy import
  ckpt, ft = run.ckpt, config.finetune
  clean_step = evaluation.make_eval_step(
      ckpt.model, common.attack({"name": "none"}), run.mesh)

  def select_clean(variables):
    return evaluation.evaluate(
        ckpt.model, variables, run.select_split, run.mesh,
        attack=common.attack({"name": "none"}),
        batch_size=int(config.eval.batch_size), num_examples=run.n_select,
        seed=run.seed, eval_step=clean_step)["clean_acc"]

  return rift.finetune(
      ckpt.model.apply, ckpt.variables, module, run.train, run.mesh,
      optimizer=lambda total: optimizer.make_optimizer(config.optimizer,
                                                       total),
      epochs=int(ft.epochs), batch_size=int(ft.batch_size),
      steps_per_epoch=int(ft.steps_per_epoch), bn=str(ft.bn),
      augment=bool(ft.augment), seed=run.seed, eval_fn=select_clean,
      log=logging.info)


def _alpha_stage(config: Any, run: _Run, finetuned, assess: _Assessor):
  """The curve on the selection split and the chosen point."""
  robust = run.ckpt.variables
  curve = []
  for alpha in rift.check_alphas(config.alphas):
    v = rift.interpolate_states(robust, finetuned, alpha)
    curve.append({"alpha": alpha, **assess(
        v, run.select_split, run.n_select,
        f"alpha {alpha:.2f} ({config.selection})", kind="select")})
  base = next((p for p in curve if p["alpha"] == 0.0), None)
  base_adv = base["adv_acc"] if base is not None else assess(
      robust, run.select_split, run.n_select, "robust model (selection)",
      kind="select")["adv_acc"]
  chosen = rift.select_alpha(curve, base_adv, float(config.tolerance))
  logging.info("chosen alpha %.2f: %s clean %.2f%% pgd %.2f%% (robust model "
               "%.2f%%, tolerance %.2f points)", chosen["alpha"],
               config.selection, 100 * chosen["clean_acc"],
               100 * chosen["adv_acc"], 100 * base_adv,
               100 * float(config.tolerance))
  return curve, chosen["alpha"]


def _plots(workdir: str, table, order, module: str, curve, alpha: float,
           epsilon: float) -> None:
  values = {r["module"]: r["mrc"] for r in sorted(
      table, key=lambda r: order.index(r["module"]))}
  plots.plot_layer_values(values, ylabel="MRC (robust loss increase)",
                          title=f"MRC, eps {epsilon:g}", highlight=[module],
                          path=os.path.join(workdir, "mrc.png"))
  plots.plot_curve(curve, title=f"RiFT {module}: robust (0) -> fine-tuned "
                   f"(1), alpha* {alpha:.2f}",
                   path=os.path.join(workdir, "interpolation.png"))


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs RiFT on ``config.checkpoint_path``; returns the report."""
  start = time.time()
  attacks = _validate(config)
  rn = _prepare(config)
  ckpt = rn.ckpt
  # Validated: from here on files may be written.
  assess = _Assessor(config, rn, attacks)
  before = assess(ckpt.variables, ckpt.split, ckpt.num_examples,
                  "robust model (test)", ood=True)
  warnings_ = _warnings(config, rn, before, attacks["eval"].label)
  table, module = _mrc_stage(config, rn, attacks["mrc"], workdir)
  finetuned, history = _finetune_stage(config, rn, module)
  best_epoch = max(history, key=lambda h: h["clean_acc"])["epoch"]
  # The input's dataset block (classes, held-out rows): a RiFT output used
  # as input again, or evaluated, sees the same data as its source.
  meta = {"model": ckpt.spec, "dataset": rn.trained_ds,
          "rift": {"source": str(config.checkpoint_path), "module": module}}
  common.save_variables(os.path.join(workdir, "finetuned"), finetuned,
                        best_epoch, meta)
  curve, alpha = _alpha_stage(config, rn, finetuned, assess)
  final = rift.interpolate_states(ckpt.variables, finetuned, alpha)
  common.save_variables(os.path.join(workdir, checkpoint.LATEST_DIR), final,
                        int(round(alpha * 100)),
                        dict(meta, rift=dict(meta["rift"], alpha=alpha)))
  after = assess(final, ckpt.split, ckpt.num_examples, "RiFT model (test)",
                 ood=True)
  report: dict[str, Any] = {
      "checkpoint": str(config.checkpoint_path), "model": ckpt.spec,
      "module": module, "module_choice": str(config.module.choice),
      "mrc": table, "finetune_history": history, "best_epoch": best_epoch,
      "selection": str(config.selection),
      "selection_num_examples": rn.n_select,
      "held_out": {"val_size": rn.trained_ds["val_size"],
                   "val_seed": rn.trained_ds["val_seed"]},
      "finetune_num_examples": len(rn.train), "curve": curve, "alpha": alpha,
      "tolerance": float(config.tolerance),
      "finetune_bn": str(config.finetune.bn),
      "attack": attacks["eval"].label, "select_attack":
      attacks["select"].label, "mrc_attack": attacks["mrc"].label,
      "test_num_examples": ckpt.num_examples, "warnings": warnings_,
      **{f"before_{k}": v for k, v in before.items()},
      **{f"after_{k}": v for k, v in after.items()},
      "wall_time_s": round(time.time() - start, 1)}
  write_points(workdir, curve)
  write_report(workdir, report)
  if jax.process_index() == 0:
    _plots(workdir, table, rn.order, module, curve, alpha,
           float(config.mrc.epsilon))
  logging.info("before: clean %.2f%% pgd %.2f%% | after: clean %.2f%% pgd "
               "%.2f%%", 100 * before["clean_acc"], 100 * before["adv_acc"],
               100 * after["clean_acc"], 100 * after["adv_acc"])
  return report
