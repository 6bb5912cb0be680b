"""The ``rws_finetune`` task: fine-tune from a shared start (theta_pre), the
way every model of a robust-weight-signature experiment is made
(configs/rws.py).

The workdir is seeded with theta_pre's (``config.init_from``) weights and a
fresh optimizer state as its step-0 checkpoint, then the ordinary training
loop resumes from it, so the clean model and every corruption model start
from the same weights (and, being one model class, share its input
normalisation). When the data has another class count than theta_pre
(``dataset.classes``), the output layer is re-initialised
(``start_variables``); every other layer is theta_pre's. A workdir that
already has checkpoints simply resumes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import checkpoint, data, models
from robustjax.errors import ConfigError
from robustjax.metrics import write_report
from robustjax.tasks import common
from robustjax.weightspace import trees


def start_variables(pre: dict[str, Any], model, spec: dict[str, Any],
                    image_shape: tuple[int, int, int], seed: int
                    ) -> tuple[dict[str, Any], list[str]]:
  """theta_pre's variables for ``model``, whose class count may differ.

  Every layer is theta_pre's, except the output layer when its tensors have
  other shapes (another class count): that whole layer (kernel and bias)
  comes from a fresh ``model.init`` with key ``seed``, as a new head in
  transfer learning. Any other difference means another architecture.

  Args:
    pre: theta_pre's ``{"params", "batch_stats"}``.
    model: the network to fine-tune (``spec``'s class count).
    spec: its model spec, for error messages.
    image_shape: ``(H, W, C)`` of one input.
    seed: the init key of the fresh layer.

  Returns:
    ``({"params", "batch_stats"}, re-initialised layer paths)``, e.g.
    ``[]`` or ``["head/dense"]``.
  """
  fresh = common.variables_of(jax.jit(lambda k: model.init(
      k, np.zeros((1, *image_shape), np.float32), train=False))(
          jax.random.key(seed)))
  flat_pre, flat_new = trees.flatten(pre), trees.flatten(fresh)
  if set(flat_pre) != set(flat_new):
    raise ConfigError(
        f"theta_pre's tensors differ from those of model {spec['name']} "
        f"width {spec['width']:g}: {trees.mismatches(pre, fresh)[0]}; "
        "fine-tune from a theta_pre of the same architecture")
  # Paths are "params/<layer>/<leaf>": strip the collection for the layer.
  changed = sorted({trees.layer_of(p.split("/", 1)[1]) for p in flat_new
                    if np.shape(flat_pre[p]) != np.shape(flat_new[p])})
  head = trees.layers(fresh["params"],
                      common.layer_order(model, image_shape))[-1]
  if changed not in ([], [head]):
    raise ConfigError(
        f"theta_pre differs from model {spec['name']} width "
        f"{spec['width']:g} with {spec['num_classes']} classes in "
        f"{', '.join(changed)}, not only in the output layer {head}; "
        "fine-tune from a theta_pre of the same architecture")
  merged = trees.unflatten({
      p: flat_new[p] if trees.layer_of(p.split("/", 1)[1]) in changed
      else flat_pre[p] for p in flat_new})
  return common.variables_of(merged), changed


def _seed_workdir(config: Any, ckpt_dir: str, source: str,
                  spec: dict[str, Any]) -> None:
  """Writes theta_pre (head re-initialised if needed) with a fresh
  optimizer state as the step-0 checkpoint of ``ckpt_dir``."""
  from robustjax.training import optimizer, step as step_lib
  variables, fresh_layers = start_variables(
      common.variables_of(checkpoint.load(source)), models.build_model(spec),
      spec, data.DATASETS[config.dataset.name].image_shape, int(config.seed))
  # The optimizer state's structure does not depend on the step count (the
  # schedule is a function of the step), so any count builds it.
  tx, _ = optimizer.make_optimizer(config.optimizer, 1000)
  params = jax.tree.map(jax.numpy.asarray, variables["params"])
  state = step_lib.TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32), params=params,
      batch_stats=jax.tree.map(jax.numpy.asarray, variables["batch_stats"]),
      opt_state=tx.init(params))
  meta = {"model": spec, "dataset": config.dataset.to_dict(),
          "objective": config.objective.to_dict(),
          "config": config.to_json_best_effort(),
          "init_from": source, "reinitialised": fresh_layers}
  ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=2, async_save=False)
  ckpt.save(0, state.to_dict(), meta)
  ckpt.close()
  logging.info("seeded %s with theta_pre %s%s", ckpt_dir, source,
               f" (re-initialised {', '.join(fresh_layers)} for "
               f"{spec['num_classes']} classes)" if fresh_layers else "")


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Seeds ``workdir`` with theta_pre as step 0 and trains with
  ``train_and_evaluate``; returns its report plus ``init_from``."""
  from robustjax.training import loop  # local: heavy import
  if not config.get("init_from"):
    raise ConfigError("set --config.init_from to the theta_pre workdir (or "
                      "step folder) every RWS model starts from")
  loop.validate(config)
  source = checkpoint.resolve(str(config.init_from))
  pre_spec = checkpoint.read_meta(source)["model"]
  want = {"name": config.model.name, "width": float(config.model.width)}
  if want != {k: pre_spec[k] for k in ("name", "width")}:
    raise ConfigError(
        f"init_from holds model {pre_spec['name']} width "
        f"{pre_spec['width']:g} but the config asks for {want['name']} width "
        f"{want['width']:g}; set --config.model.name/--config.model.width to "
        "the theta_pre model")
  # The class count comes from the data (dataset.classes may keep a subset);
  # it may differ from theta_pre's, and then the head is re-initialised.
  spec = dict(pre_spec, num_classes=data.num_classes(
      config.dataset.name, config.dataset.get("classes", "")))
  ckpt_dir = os.path.join(workdir, checkpoint.LATEST_DIR)
  if not checkpoint.has_checkpoint(ckpt_dir):
    _seed_workdir(config, ckpt_dir, source, spec)
  report = loop.train_and_evaluate(config, workdir)
  report["init_from"] = source
  write_report(workdir, report)
  return report
