"""The ``smoothing_train`` task: train the mixing network of an adaptive
mixture of two frozen checkpoints (configs/smoothing.py:train).

Config keys: ``checkpoint_std``, ``checkpoint_rob``, ``step``, ``best``,
``dataset``, ``std_scale``, ``rob_scale``, ``mixer`` (``width``,
``std_layers``, ``rob_layers``: the two feature layers of each model),
``train_constants`` and ``eval_constants`` (``gamma_scale, gamma_bias,
alpha_scale, alpha_bias``), ``attack`` (the randomised adaptive APGD of
``smoothing.training.AttackRecipe``), ``loss`` (``LossWeights``),
``optimizer`` (``lr, weight_decay, clip_norm, accum``), ``batch_size``,
``num_batches``, ``eval`` (``num_examples``, ``batch_size``: the clean
check at the end), ``seed``, ``log_every``. Writes the mixer's checkpoint
under ``WORKDIR/checkpoints/<num_batches>`` (its meta names the base
checkpoints, feature layers, width and constants), ``metrics.jsonl`` and
``report.json``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
from absl import logging

from robustjax import checkpoint, data
from robustjax.errors import ConfigError
from robustjax.metrics import write_points, write_report
from robustjax.smoothing import adaptive, mixing_net, mixture, training
from robustjax.smoothing import evaluate as smoothing_eval
from robustjax.tasks import common

MIXER_MODEL = "mixing_net_v4"


def constants(block: Any, squeeze: bool) -> mixing_net.GammaConstants:
  """A ``GammaConstants`` from a config block; with ``squeeze``, the range
  of ``a`` must lie inside [0, 1]."""
  c = mixing_net.GammaConstants(
      float(block.gamma_scale), float(block.gamma_bias),
      float(block.get("alpha_scale", 1.0)),
      float(block.get("alpha_bias", 0.0)), squeeze)
  lo, hi = c.alpha_range
  if squeeze and not (0.0 <= lo <= hi <= 1.0):
    raise ConfigError(f"eval_constants give a in [{lo}, {hi}], outside "
                      "[0, 1]; set alpha_bias >= 0, alpha_scale >= 0 and "
                      "alpha_bias + alpha_scale <= 1")
  return c


def classifier(std, rob, *, width: float, std_layers, rob_layers,
               std_scale: float, rob_scale: float, train_constants,
               eval_constants, image_shape) -> adaptive.AdaptiveClassifier:
  """The adaptive mixture of the pair, its feature layers checked (from
  shapes alone) to exist and to pair up."""
  if not float(width) > 0:
    raise ConfigError(f"mixer.width={width} must be positive")
  layers = [tuple(str(n) for n in ls) for ls in (std_layers, rob_layers)]
  if any(len(ls) != 2 for ls in layers):
    raise ConfigError(f"mixer layers {layers} must name two layers per "
                      "model (the second at half the first's resolution)")
  clf = adaptive.AdaptiveClassifier(
      std.model, rob.model, layers[0], layers[1], float(width),
      mixture.check_scale(std_scale, "std_scale"),
      mixture.check_scale(rob_scale, "rob_scale"), train_constants,
      eval_constants)
  jax.eval_shape(lambda: clf.init_mixer(jax.random.key(0), std.variables,
                                        rob.variables, image_shape))
  return clf


def _recipe(config: Any) -> tuple[training.AttackRecipe,
                                  training.LossWeights]:
  a, c = config.attack, config.loss
  recipe = training.AttackRecipe(
      eps=float(a.eps), eps_factor=tuple(float(f) for f in a.eps_factor),
      steps_df=float(a.steps_df), max_steps=int(a.max_steps),
      loss_weight_max=float(a.loss_weight_max), n_targets=int(a.n_targets),
      rho=float(a.rho)).validated()
  return recipe, training.LossWeights(
      float(c.c_bce), float(c.c_ce), float(c.c_prod), float(c.scale_clean),
      float(c.scale_ada))


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Trains the mixing network; returns the report."""
  start = time.time()
  recipe, loss = _recipe(config)
  if int(config.num_batches) < 1 or int(config.batch_size) < 2:
    raise ConfigError("num_batches must be >= 1 and batch_size >= 2")
  if checkpoint.has_checkpoint(os.path.join(workdir, "checkpoints")):
    raise ConfigError(f"{workdir} already holds a mixing network; pick a new "
                      "workdir")
  std, rob = common.restore_pair(config, int(config.eval.num_examples))
  clf = classifier(
      std, rob, width=config.mixer.width, std_layers=config.mixer.std_layers,
      rob_layers=config.mixer.rob_layers, std_scale=config.std_scale,
      rob_scale=config.rob_scale,
      train_constants=constants(config.train_constants, False),
      eval_constants=constants(config.eval_constants, True),
      image_shape=std.split.images.shape[1:])
  train = data.subset(data.load_split(
      config.dataset.name, "train", source=config.dataset.source,
      data_dir=config.dataset.get("data_dir") or None),
      common.trained_classes(config.dataset, std.meta))
  opt = config.optimizer

  # Validated: from here on files may be written.
  base = {"std": std.variables, "rob": rob.variables}
  seed = int(config.get("seed", 0))
  result = training.train_mixer(
      clf, base, clf.init_mixer(jax.random.key(seed), std.variables,
                                rob.variables, std.split.images.shape[1:]),
      train, batch_size=int(config.batch_size),
      num_batches=int(config.num_batches), recipe=recipe, loss=loss,
      lr=float(opt.lr), weight_decay=float(opt.weight_decay),
      clip_norm=float(opt.clip_norm), accum=int(opt.accum), seed=seed,
      log=logging.info, log_every=int(config.get("log_every", 1)))
  meta = {"model": {"name": MIXER_MODEL, "width": clf.width},
          "smoothing": mixer_meta(config, clf)}
  common.save_variables(os.path.join(workdir, "checkpoints"), result.mixer,
                        int(config.num_batches), meta)
  check = smoothing_eval.make_evaluator(
      clf, std.split, common.mesh_of(config), autoattack_config=None,
      transfer={}, batch_size=int(config.eval.batch_size),
      num_examples=std.num_examples,
      certify_alpha=clf.eval_constants.alpha_range[0],
      rob_scale=clf.rob_scale)({**base, "mixer": result.mixer})
  logging.info("mixer: clean %.2f%% | a mean %.3f in [%.3f, %.3f] (n=%d)",
               100 * check["clean_acc"], check["alpha_mean"],
               check["alpha_min"], check["alpha_max"], check["num_examples"])
  report = {"checkpoint_std": str(config.checkpoint_std),
            "checkpoint_rob": str(config.checkpoint_rob),
            "mixer": meta["smoothing"], "history": result.history,
            "final_loss": result.history[-1]["loss"], **check,
            "wall_time_s": round(time.time() - start, 1)}
  write_points(workdir, result.history)
  write_report(workdir, report)
  return report


def mixer_meta(config: Any, clf: adaptive.AdaptiveClassifier
               ) -> dict[str, Any]:
  """What the mixer checkpoint records to be rebuilt on its pair."""
  import dataclasses  # local: only this helper needs it
  return {"checkpoint_std": os.path.abspath(str(config.checkpoint_std)),
          "checkpoint_rob": os.path.abspath(str(config.checkpoint_rob)),
          "std_layers": list(clf.std_layers),
          "rob_layers": list(clf.rob_layers), "width": clf.width,
          "std_scale": clf.std_scale, "rob_scale": clf.rob_scale,
          "train_constants": dataclasses.asdict(clf.train_constants),
          "eval_constants": dataclasses.asdict(clf.eval_constants)}
