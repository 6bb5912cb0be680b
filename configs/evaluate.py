r"""Evaluate a checkpoint: clean and PGD accuracy on a test split.

  python launch.py --config=configs/evaluate.py \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/eval_qs

Arg keys: ``steps=N`` (PGD steps, default 20), ``restarts=R``, ``n=N`` (first
N test points, default all), ``best`` (the best checkpoint instead of the
newest), ``ood=rift18|benchmark15|all19|none`` (accuracy under CIFAR-10-C
corruptions generated on the fly, default none), ``sev=12345`` (the
severities, as digits), ``smoke``. Prints ``... clean X% | pgd20 Y% (n=N)``
(and with ``ood``, ``... ood rift18 X% (18 corruptions x 5 severities, n=N;
worst NAME Y%)``) and writes ``WORKDIR/report.json`` with clean_acc, adv_acc,
attack, eps, num_examples (and ood_acc, ood_by_corruption, ood_list, ...).

  python launch.py --config=configs/evaluate.py:steps=0,ood=rift18 \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/eval_ood

``--config.ood.source=tfds --config.ood.data_dir=DIR`` reads the official
CIFAR-10-C files (TFDS ``cifar10_corrupted``) instead of generating them.
The checkpoint names its own model: no model config is needed.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, steps=20, restarts=1, n=0, eps=8.0,
                          ood="none", sev="12345")
  c = common.checkpoint_task("evaluate", best=bool(args.get("best", False)))
  c.eval = dict(num_examples=int(args["n"]), batch_size=512,
                attack=common.pgd_attack(int(args["steps"]),
                                         eps=float(args["eps"]) / 255,
                                         restarts=int(args["restarts"])))
  c.ood = dict(corruptions=args["ood"],
               severities=tuple(int(d) for d in str(args["sev"])),
               source="generated", data_dir="",
               num_examples=0,   # 0: the same points as eval.num_examples
               batch_size=0)     # 0: eval.batch_size
  if args.get("smoke"):
    c.eval.update(num_examples=64, batch_size=32)
    c.eval.attack.steps = 2
  return c
