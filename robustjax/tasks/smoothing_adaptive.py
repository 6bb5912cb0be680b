"""The ``smoothing_adaptive`` task: evaluate an adaptive mixture, its mixing
network attacked with everything else (configs/smoothing.py:adaptive).

Config keys: ``mixer_path`` (a ``smoothing_train`` workdir or step folder),
``checkpoint_std``, ``checkpoint_rob`` (empty: the ones the mixer was
trained on), ``step``, ``best``, ``dataset``, ``eval_constants``
(``source``: ``checkpoint`` for the ones the mixer saved, or ``config`` for
``gamma_scale, gamma_bias, alpha_scale, alpha_bias`` given here),
``num_examples``, ``batch_size``, ``chunk_size``, ``autoattack``,
``transfer`` (as the ``smoothing`` task), ``seed``, ``num_devices``.
AutoAttack runs on the composite end to end (gradients through both models
and through ``a(x)``). Writes ``WORKDIR/report.json``: clean, per-attack
and worst-case robust accuracy, the distribution of ``a`` and the fraction
certified at the lowest ``a`` the mixture can take.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import logging

from robustjax import checkpoint
from robustjax.errors import ConfigError
from robustjax.metrics import MetricWriter, write_report
from robustjax.smoothing import adaptive, mixing_net
from robustjax.tasks import common
from robustjax.tasks import smoothing as fixed
from robustjax.tasks import smoothing_train


def _mixer(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """The mixer checkpoint's variables and its ``smoothing`` meta."""
  path = config.get("mixer_path")
  if not path:
    raise ConfigError("set --config.mixer_path to a smoothing_train workdir")
  tree = checkpoint.load(path)
  meta = tree["meta"].get("smoothing")
  if tree["meta"].get("model", {}).get("name") != \
      smoothing_train.MIXER_MODEL or not meta:
    raise ConfigError(f"{path} holds no mixing network (a model "
                      f"{tree['meta'].get('model')}); give a smoothing_train "
                      "workdir")
  return common.variables_of(tree), meta


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Evaluates the adaptive mixture of ``config.mixer_path``."""
  start = time.time()
  aa, transfer = fixed.attacks_of(config)
  mixer, meta = _mixer(config)
  for side in ("std", "rob"):
    if not config.get(f"checkpoint_{side}"):
      config[f"checkpoint_{side}"] = meta[f"checkpoint_{side}"]
  std, rob = common.restore_pair(config, int(config.num_examples))
  ec = config.eval_constants
  if ec.source not in ("checkpoint", "config"):
    raise ConfigError(f"eval_constants.source={ec.source!r}; use "
                      "'checkpoint' or 'config'")
  eval_constants = smoothing_train.constants(
      ec if ec.source == "config" else _block(meta["eval_constants"]), True)
  clf = smoothing_train.classifier(
      std, rob, width=meta["width"], std_layers=meta["std_layers"],
      rob_layers=meta["rob_layers"], std_scale=meta["std_scale"],
      rob_scale=meta["rob_scale"],
      train_constants=mixing_net.GammaConstants(
          **meta["train_constants"]), eval_constants=eval_constants,
      image_shape=std.split.images.shape[1:])
  adaptive.check_mixer_fit(clf, mixer, std.variables, rob.variables,
                           std.split.images.shape[1:],
                           f"the mixing network at {config.mixer_path}")
  a_min = eval_constants.alpha_range[0]
  eval_fn = fixed.evaluator(clf, std, rob, config, aa, transfer,
                            certify_alpha=a_min)

  # Validated: from here on files may be written.
  result = eval_fn({"std": std.variables, "rob": rob.variables,
                    "mixer": mixer})
  logging.info("adaptive: %s | a mean %.3f in [%.3f, %.3f]",
               fixed.format_point(result), result["alpha_mean"],
               result["alpha_min"], result["alpha_max"])
  report = dict(result, mixer_path=os.path.abspath(str(config.mixer_path)),
                checkpoint_std=str(config.checkpoint_std),
                checkpoint_rob=str(config.checkpoint_rob),
                eval_constants=dict(
                    gamma_scale=eval_constants.gamma_scale,
                    gamma_bias=eval_constants.gamma_bias,
                    alpha_scale=eval_constants.alpha_scale,
                    alpha_bias=eval_constants.alpha_bias),
                certified_at_alpha=a_min,
                transfer_attack=None if transfer is None
                else transfer.to_dict(),
                wall_time_s=round(time.time() - start, 1))
  writer = MetricWriter(workdir)
  writer.write(0, {k: v for k, v in result.items()
                   if isinstance(v, (int, float, np.floating))})
  writer.close()
  write_report(workdir, report)
  return report


class _block(dict):
  """A saved constants mapping read like a config block (``.key``)."""
  __getattr__ = dict.__getitem__
