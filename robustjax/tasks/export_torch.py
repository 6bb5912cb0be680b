"""The ``export_torch`` task: a robustjax checkpoint out as a PyTorch
``state_dict`` file (configs/export_torch.py).

Config keys: ``checkpoint_path``, ``step``, ``best``, ``output`` (a
``.pt``/``.pth``/``.safetensors`` path; "" = ``WORKDIR/model.pt``),
``arch`` ("" = the layout the import recorded, else the one whose class
computes the model), ``sub_block1`` and ``mu_sigma`` (``auto``, ``true``,
``false``). The file is read back and converted again; the report says
whether that gives the same bits (``round_trip_exact``). Writes the file
and ``WORKDIR/report.json``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import checkpoint, models
from robustjax.errors import ConfigError
from robustjax.interop import archs, convert, files
from robustjax.metrics import write_report
from robustjax.tasks import common

_SWITCH = {"auto": None, "true": True, "false": False}


def _switch(config: Any, key: str, recorded: Any) -> bool | None:
  value = str(config.get(key, "auto")).lower()
  if value not in _SWITCH:
    raise ConfigError(f"{key}={value!r}; use auto, true or false")
  chosen = _SWITCH[value]
  return recorded if chosen is None else chosen


def _validate(config: Any, workdir: str) -> dict[str, Any]:
  """The checkpoint, the output path and the export options, checked."""
  path = config.get("checkpoint_path")
  if not path:
    raise ConfigError("set --config.checkpoint_path to a workdir or a "
                      "checkpoint step folder")
  tree = checkpoint.load(path, int(config.get("step", 0)) or None,
                         best=bool(config.get("best", False)))
  spec = models.full_spec(tree["meta"]["model"])
  record = tree["meta"].get("torch") or {}
  arch = str(config.arch) or record.get("arch") or archs.arch_of(spec).name
  archs.get(arch)
  output = str(config.output) or os.path.join(workdir, "model.pt")
  if not output.endswith((".pt", ".pth", files.SAFETENSORS_SUFFIX)):
    raise ConfigError(f"output={output}: name a .pt, .pth or .safetensors "
                      "file")
  sub_block1 = _switch(config, "sub_block1", record.get("sub_block1"))
  mu_sigma = _switch(config, "mu_sigma", record.get("mu_sigma"))
  # Build once here, so a spec no class computes stops before any write.
  state_dict = convert.to_torch(common.variables_of(tree), spec, arch=arch,
                                sub_block1=bool(sub_block1),
                                mu_sigma=mu_sigma)
  return dict(tree=tree, spec=spec, arch=arch, output=output,
              state_dict=state_dict, sub_block1=bool(sub_block1))


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Writes ``config.output``; returns the report."""
  start = time.time()
  plan = _validate(config, workdir)
  for folder in (workdir, os.path.dirname(os.path.abspath(plan["output"]))):
    os.makedirs(folder, exist_ok=True)
  files.write_state_dict(plan["state_dict"], plan["output"])
  # Read back through the import path: the file must give the same bits.
  free = archs.get(plan["arch"]).free
  spec = plan["spec"]
  options = {k: spec[k] for k in free if k in spec}
  back, _ = convert.from_torch(
      files.read_state_dict(plan["output"]), arch=plan["arch"],
      num_classes=spec["num_classes"], mean=tuple(spec["mean"]),
      std=tuple(spec["std"]), **options)
  original = common.variables_of(plan["tree"])
  exact = jax.tree.structure(back) == jax.tree.structure(original) and all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back),
                                           jax.tree.leaves(original)))
  logging.info("exported %s as %s: %d tensors -> %s (round trip %s)",
               config.checkpoint_path, plan["arch"], len(plan["state_dict"]),
               plan["output"], "exact" if exact else "NOT exact")
  report = dict(checkpoint=str(config.checkpoint_path),
                checkpoint_step=plan["tree"]["step"], arch=plan["arch"],
                output=os.path.abspath(plan["output"]), model=spec,
                num_tensors=len(plan["state_dict"]),
                sub_block1=plan["sub_block1"], round_trip_exact=exact,
                wall_time_s=round(time.time() - start, 1))
  write_report(workdir, report)
  return report
