r"""AutoAttack a checkpoint: the RobustBench protocol in JAX.

  python launch.py --config=configs/autoattack.py \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/aa_qs

Runs AutoAttack (version ``standard``: APGD-CE, APGD-T, FAB-T, Square at
Linf 8/255) on the first ``n`` test points, unshuffled, and prints one line
per attack, e.g. ``autoattack apgd-ce: robust 31.20% (312/1000) 41.0 s``,
then ``clean X% | autoattack Y% (n=N)``. Writes ``WORKDIR/report.json``:
clean_acc, robust_acc_after (per attack), robust_acc, eps, norm, version,
num_examples, max_perturbation, wall_time_s.

Arg keys: ``version=standard|rand|custom``, ``attacks=apgd-ce+square`` (for
custom), ``norm=linf|l2``, ``eps=E`` (in units of 1/255: 8 -> 8/255; L2 0.5
is ``eps=127.5``, or set ``--config.autoattack.eps=0.5``), ``n=N`` (first N
test points, default 1000; 0 = all), ``best``, ``seed=S``, ``smoke`` (64
points and short attacks: a test of the plumbing, not a robustness number).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, version="standard", attacks="", norm="linf",
                          eps=8.0, n=-1, seed=0)
  smoke = bool(args.get("smoke"))
  if args["n"] < 0:  # not given: 1000 points (64 for smoke)
    args["n"] = 64 if smoke else 1000
  c = common.checkpoint_task("autoattack",
                             best=bool(args.get("best", False)))
  c.num_examples = int(args["n"])
  c.batch_size = 500
  c.chunk_size = 5  # attack iterations per compiled chunk
  c.autoattack = dict(
      version=args["version"],
      attacks=args["attacks"].replace("+", ","),
      eps=float(args["eps"]) / 255, norm=args["norm"],
      apgd_steps=100, apgd_restarts=1, eot_iter=0,  # 0: the version's own
      n_target_classes=9, fab_steps=100, square_queries=5000,
      seed=int(args["seed"]))
  if smoke:
    c.batch_size = 32
    c.autoattack.update(apgd_steps=10, fab_steps=10, square_queries=50,
                        n_target_classes=3)
  return c
