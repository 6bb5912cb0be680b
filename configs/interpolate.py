r"""Interpolate between two checkpoints of one model: curve, barrier, plot.

  python launch.py --config=configs/interpolate.py \
      --config.checkpoint_a=workdirs/interp/standard \
      --config.checkpoint_b=workdirs/exp_fast_at --workdir=workdirs/interp/curve

Evaluates ``(1 - alpha) * A + alpha * B`` at 11 alphas from 0 to 1 (clean and
PGD-10 accuracy and cross-entropy on the first 1,000 test points), logs one
line per alpha (``alpha 0.50: clean 61.2% (loss 1.040) | adv 20.1% (loss
2.310)``) and the clean/adversarial loss barrier, and writes
``WORKDIR/report.json`` (curve, barriers, per-layer distances),
``WORKDIR/metrics.jsonl`` and ``WORKDIR/interpolation.png``. It ends with
``report: WORKDIR/report.json {'a_clean_acc': ..., 'b_adv_acc': ...}``.

Arg keys: ``n=N`` test points (0 = all), ``steps=N`` PGD steps (0 = clean
only), ``alphas=K`` grid points, ``bn=interpolate|keep_a|keep_b|recompute``
(BatchNorm statistics: lerp them, keep one side, or re-estimate them on
``bn_batches`` training batches at every alpha), ``ood=LIST`` (a corruption list name such
as ``benchmark15``, or one corruption), ``sharpness`` (layer-wise
sharpness of both endpoints), ``smoke``. Alphas outside [0, 1] need
``--config.allow_extrapolation=true``, e.g.
``--config.alphas="(-0.2, 0.0, 0.5, 1.0, 1.2)"``.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, n=1000, steps=10, alphas=11, bn="interpolate",
                          ood="none")
  c = ml_collections.ConfigDict()
  c.task = "interpolate"
  c.seed = 0
  c.num_devices = 0
  c.checkpoint_a = ""
  c.checkpoint_b = ""
  c.best = False               # read the best checkpoint of each workdir
  c.alphas = ()                # explicit grid; empty = num_alphas points
  c.num_alphas = int(args["alphas"])
  c.allow_extrapolation = False
  c.batch_stats = str(args["bn"])
  c.bn_batches = 20
  c.bn_batch_size = 128
  c.dataset = dict(name="cifar10", source="embedded", data_dir="",
                   split="test")
  c.eval = dict(num_examples=int(args["n"]), batch_size=500,
                attack=common.pgd_attack(int(args["steps"])))
  # OOD accuracy at every alpha: the ``ood`` block of configs/evaluate.py.
  c.ood = dict(corruptions=str(args["ood"]), severities=(1, 2, 3, 4, 5),
               source="generated", data_dir="", num_examples=1000,
               batch_size=0)
  c.sharpness = dict(enabled=bool(args.get("sharpness", False)), rho=0.05,
                     norm="l2", adaptive=True, steps=5, num_examples=256,
                     straggler_ratio=2.0)
  if args.get("smoke"):
    c.num_alphas = 3
    c.eval.update(num_examples=32, batch_size=32)
    c.eval.attack.steps = 2
    c.bn_batches, c.bn_batch_size = 2, 32
    c.ood.num_examples = 32
    c.sharpness.update(steps=2, num_examples=32)
  return c
