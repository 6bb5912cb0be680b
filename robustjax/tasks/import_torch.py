"""The ``import_torch`` task: a PyTorch / RobustBench checkpoint file in, a
robustjax workdir out (configs/import_torch.py).

Config keys: ``file`` (``.pt``/``.pth``/``.safetensors``), either
``robustbench`` (a RobustBench model name, looked up in
``interop.robustbench`` under ``dataset.name`` and ``threat``) or ``arch``
(an ``interop.ARCHS`` name) with ``options`` (``depth``, ``widen``,
``activation``, ``num_classes``; 0 / "" = read off the file or the class
default) and ``mean``/``std`` ("" = the class's, ``none`` = raw [0, 1]
input, or three comma-separated numbers); ``allow_pickle`` (opt in to
``torch.load(weights_only=False)``); ``verify`` (clean accuracy on the
first N points of ``dataset``, 0 = skip); ``dataset``, ``eval.batch_size``,
``seed``, ``num_devices``.

Writes ``WORKDIR/checkpoints/0/`` (the converted variables; its meta holds
the model spec, the dataset and a ``torch`` record for export) and
``WORKDIR/report.json``. Every other checkpoint-reading task takes
``--config.checkpoint_path=WORKDIR``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import attacks, checkpoint, evaluation, models
from robustjax.errors import ConfigError
from robustjax.interop import archs, convert, files, robustbench
from robustjax.metrics import write_report
from robustjax.tasks import common

OPT_IN = "--config.allow_pickle=true"


def _stats(value: str, what: str) -> tuple[float, ...] | None:
  """``mean``/``std`` config text -> 3 floats, RAW for ``none``, None for
  "" (the class's own)."""
  text = str(value).strip()
  if not text:
    return None
  if text == "none":
    return archs.RAW[0] if what == "mean" else archs.RAW[1]
  try:
    numbers = tuple(float(v) for v in text.split(","))
  except ValueError:
    numbers = ()
  if len(numbers) != 3:
    raise ConfigError(f"{what}={text!r}: give three comma-separated numbers "
                      "(RGB), 'none' (raw [0, 1] input) or '' (the class's)")
  return numbers


def _plan(config: Any) -> dict[str, Any]:
  """The architecture, ``from_torch`` options and export record the config
  asks for; ConfigError for anything unknown or contradictory."""
  name, arch = str(config.robustbench).strip(), str(config.arch).strip()
  if bool(name) == bool(arch):
    raise ConfigError("set exactly one of --config.robustbench=NAME (a "
                      "RobustBench model) and --config.arch=ARCH (one of "
                      f"{', '.join(archs.ARCHS)})")
  explicit = {k: v for k, v in dict(config.options).items() if v}
  for key, what in (("mean", "mean"), ("std", "std")):
    stats = _stats(config.get(key, ""), what)
    if stats is not None:
      explicit[key] = stats
  if name:
    if explicit:
      raise ConfigError(
          f"--config.robustbench={name} sets the architecture and its "
          f"options; drop {', '.join(sorted(explicit))} (or use arch=...)")
    entry = robustbench.entry(name, str(config.dataset.name),
                              str(config.threat))
    return dict(arch=entry.arch, options=entry.from_torch_options(),
                robustbench=name, threat=entry.threat,
                sub_block1=entry.sub_block1, mu_sigma=entry.buffers)
  archs.get(arch)
  return dict(arch=arch, options=explicit, robustbench="", threat="",
              sub_block1=None, mu_sigma=None)


def _validate(config: Any, workdir: str) -> dict[str, Any]:
  path = str(config.file).strip()
  if not path:
    raise ConfigError("set --config.file to a .pt, .pth or .safetensors file")
  plan = _plan(config)
  if checkpoint.has_checkpoint(os.path.join(workdir, checkpoint.LATEST_DIR)):
    raise ConfigError(f"workdir {workdir} already holds a checkpoint; "
                      "import into a new --workdir")
  if int(config.verify) < 0:
    raise ConfigError(f"verify={config.verify}: give N >= 0 test points")
  return dict(plan, file=os.path.abspath(os.path.expanduser(path)))


def _verify(config: Any, model, variables, spec) -> dict[str, Any]:
  """Clean accuracy on the first ``config.verify`` points."""
  split = common.load_eval_split(config.dataset)
  if split.num_classes != spec["num_classes"]:
    raise ConfigError(
        f"the imported model has {spec['num_classes']} classes but dataset "
        f"'{config.dataset.name}' has {split.num_classes}; set "
        "--config.dataset.name to the model's dataset or verify=0")
  n = min(int(config.verify), len(split))
  return evaluation.evaluate(
      model, variables, split, common.mesh_of(config),
      attack=attacks.build({"name": "none"}),
      batch_size=int(config.eval.batch_size), num_examples=n,
      seed=int(config.seed))


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Converts ``config.file``; returns the report."""
  start = time.time()
  plan = _validate(config, workdir)
  state_dict = convert.strip_prefixes(files.read_state_dict(
      plan["file"], allow_pickle=bool(config.allow_pickle), opt_in=OPT_IN))
  variables, spec = convert.from_torch(state_dict, arch=plan["arch"],
                                       **plan["options"])
  model = models.build_model(spec)
  torch_record = dict(
      arch=plan["arch"], robustbench=plan["robustbench"],
      threat=plan["threat"], file=plan["file"],
      sub_block1=bool(plan["sub_block1"]) if plan["sub_block1"] is not None
      else any(k.startswith(convert.SUB_BLOCK1) for k in state_dict),
      mu_sigma=bool(plan["mu_sigma"]) if plan["mu_sigma"] is not None
      else all(b in state_dict for b in convert.BUFFERS))
  meta = {"model": spec, "torch": torch_record,
          "dataset": {"name": str(config.dataset.name),
                      "source": str(config.dataset.source), "classes": "",
                      "val_size": 0, "val_seed": 0}}
  num_params = sum(int(np.size(v)) for v in jax.tree.leaves(
      variables["params"]))
  # Verified before anything is written: a dataset that does not fit the
  # model stops the run with an empty workdir.
  result = _verify(config, model, variables, spec) if int(
      config.verify) else None
  common.save_variables(os.path.join(workdir, checkpoint.LATEST_DIR),
                        variables, 0, meta)
  logging.info("imported %s as %s%s: %s, %d parameters -> %s",
               plan["file"], plan["arch"],
               f" ({plan['robustbench']})" if plan["robustbench"] else "",
               {k: v for k, v in spec.items() if k not in ("mean", "std")},
               num_params, workdir)
  report = dict(file=plan["file"], arch=plan["arch"],
                robustbench=plan["robustbench"], model=spec,
                num_params=num_params, torch=torch_record,
                wall_time_s=round(time.time() - start, 1))
  if result is not None:
    logging.info("verify: clean %.2f%% on the first %d %s %s points",
                 100 * result["clean_acc"], result["num_examples"],
                 config.dataset.name, config.dataset.get("split", "test"))
    report.update(clean_acc=result["clean_acc"],
                  num_examples=result["num_examples"])
  write_report(workdir, report)
  return report
