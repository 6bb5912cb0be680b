r"""Export a robustjax checkpoint as a PyTorch state_dict.

  python launch.py --config=configs/export_torch.py \
      --config.checkpoint_path=workdirs/rift \
      --config.output=workdirs/rift/model.pt --workdir=workdirs/rift_export

Writes ``output`` (``.pt``/``.pth`` with torch.save, ``.safetensors`` with
the safetensors package), a state_dict that the matching PyTorch class
(RobustBench's, docs/interop.md) loads with ``load_state_dict(strict=True)``,
then reads it back and checks that it converts to the same bits. ``arch``
names the class's layout ("" = the one the import recorded, else the one
that computes the model); ``sub_block1`` and ``mu_sigma`` (``auto``, ``true``,
``false``) add the TRADES WideResNet's unused ``sub_block1`` copy and the
``mu``/``sigma`` normalisation buffers (``auto``: as the imported file had
them; for a model trained here, buffers when it normalises). Prints
``exported CHECKPOINT as ARCH: K tensors -> OUTPUT`` and writes
WORKDIR/report.json.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, output="", arch="", sub_block1="auto",
                          mu_sigma="auto")
  c = common.checkpoint_task("export_torch",
                             best=bool(args.get("best", False)))
  c.output = str(args["output"])  # "" = WORKDIR/model.pt
  c.arch = str(args["arch"])
  c.sub_block1 = str(args["sub_block1"])
  c.mu_sigma = str(args["mu_sigma"])
  return c
