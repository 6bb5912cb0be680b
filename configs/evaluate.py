r"""Evaluate a checkpoint: clean and PGD accuracy on a test split.

  python launch.py --config=configs/evaluate.py \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/eval_qs

Arg keys: ``steps=N`` (PGD steps, default 20), ``restarts=R``, ``n=N`` (first
N test points, default all), ``best`` (the best checkpoint instead of the
newest), ``smoke``. Prints ``... clean X% | pgd20 Y% (n=N)`` and writes
``WORKDIR/report.json`` with clean_acc, adv_acc, attack, eps, num_examples.
The checkpoint names its own model: no model config is needed.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, steps=20, restarts=1, n=0, eps=8.0)
  c = ml_collections.ConfigDict()
  c.task = "evaluate"
  c.seed = 0
  c.num_devices = 0
  c.checkpoint_path = ""
  c.step = 0
  c.best = bool(args.get("best", False))
  c.dataset = dict(name="cifar10", source="embedded", data_dir="",
                   split="test")
  c.eval = dict(num_examples=int(args["n"]), batch_size=512,
                attack=common.pgd_attack(int(args["steps"]),
                                         eps=float(args["eps"]) / 255,
                                         restarts=int(args["restarts"])))
  if args.get("smoke"):
    c.eval.update(num_examples=64, batch_size=32)
    c.eval.attack.steps = 2
  return c
