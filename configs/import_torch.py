r"""Import a PyTorch / RobustBench checkpoint into a robustjax workdir.

  python launch.py \
      --config=configs/import_torch.py:robustbench=Wang2023Better_WRN-28-10,verify=1000 \
      --config.file=models/cifar10/Linf/Wang2023Better_WRN-28-10.pt \
      --workdir=workdirs/wang28

  python launch.py --config=configs/import_torch.py:arch=wide_resnet \
      --config.file=my_wrn.pt --workdir=workdirs/my_wrn

``robustbench=NAME`` takes the architecture and options from the table of
supported RobustBench models (docs/interop.md), under ``dataset=`` (cifar10,
cifar100) and ``threat=`` (Linf, L2, corruptions); ``arch=NAME`` names the
PyTorch class instead (wide_resnet, dm_wide_resnet, dm_preact_resnet18,
resnet18, preact_resnet18, preact_resnet18_v2) with
``--config.options.{depth,widen,activation,num_classes}`` (read off the
file where unset) and ``--config.mean`` / ``--config.std`` ("0.5,0.5,0.5",
``none`` for raw input; unset: the class's). ``verify=N`` prints the clean
accuracy on the first N test points (compare with the leaderboard's clean
column). ``allow_pickle`` opts in to unpickling a file that holds Python
objects besides tensors (only for files you trust).

Prints ``imported FILE as ARCH (NAME): {spec}, P parameters -> WORKDIR``
and, with verify, ``verify: clean X% on the first N cifar10 test points``;
writes WORKDIR/checkpoints/0 (read by evaluate, autoattack, rift, rws,
interpolate, export_torch and ``checkpoint.load``) and WORKDIR/report.json.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, robustbench="", arch="", file="",
                          dataset="cifar10", threat="Linf", verify=0)
  c = ml_collections.ConfigDict()
  c.task = "import_torch"
  c.seed = 0
  c.num_devices = 0
  c.file = str(args["file"])
  c.robustbench = str(args["robustbench"])
  c.threat = str(args["threat"])
  c.arch = str(args["arch"])
  # 0 / "": read off the file (depth, widen, num_classes) or the class's
  # default (activation).
  c.options = dict(depth=0, widen=0, activation="", num_classes=0)
  c.mean = ""
  c.std = ""
  c.allow_pickle = bool(args.get("allow_pickle", False))
  c.verify = int(args["verify"])
  c.dataset = dict(name=str(args["dataset"]), source="embedded", data_dir="",
                   split="test", classes="")
  c.eval = dict(batch_size=500)
  return c
