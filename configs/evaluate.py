r"""Evaluate a checkpoint: clean and attacked accuracy on a test split.

  python launch.py --config=configs/evaluate.py \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/eval_qs

  python launch.py --config=configs/evaluate.py:attack=apgd-ce \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/eval_apgd

Arg keys: ``attack=NAME`` (any registered attack: pgd, the default, fgsm,
apgd-ce, apgd-dlr, apgd-t, fab-t, square; its parameters are spelled out
under ``eval.attack`` and each can be overridden, e.g.
``--config.eval.attack.rho=0.5``), ``steps=N`` (steps of pgd, default 20,
or of an APGD / FAB attack, default 100; 0 = clean only), ``restarts=R``,
``n=N`` (first N test points, default all), ``best`` (the best checkpoint instead of the
newest), ``ood=rift18|benchmark15|all19|none`` (accuracy under CIFAR-10-C
corruptions generated on the fly, default none), ``sev=12345`` (the
severities, as digits), ``smoke``. Prints ``... clean X% | pgd20 Y% (n=N)``
(and with ``ood``, ``... ood rift18 X% (18 corruptions x 5 severities, n=N;
worst NAME Y%)``) and writes ``WORKDIR/report.json`` with clean_acc, adv_acc,
attack, eps, num_examples (and ood_acc, ood_by_corruption, ood_list, ...).

  python launch.py --config=configs/evaluate.py:steps=0,ood=rift18 \
      --config.checkpoint_path=workdirs/quickstart --workdir=workdirs/eval_ood

``--config.eval.chunk_size=K`` runs the attack's steps as compiled chunks
of K (default 5; 0 compiles every step into one program: the same
per-point results, slower to compile, and for long attacks far more
memory: APGD-CE with 100 steps on 256 points asked XLA for 26 GB).

``--config.ood.source=tfds --config.ood.data_dir=DIR`` reads the official
CIFAR-10-C files (TFDS ``cifar10_corrupted``) instead of generating them.
The checkpoint names its own model: no model config is needed.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, attack="pgd", steps=-1, restarts=1, n=0,
                          eps=8.0, ood="none", sev="12345")
  c = common.checkpoint_task("evaluate", best=bool(args.get("best", False)))
  # chunk_size: attack steps per compiled chunk (evaluation.make_eval_step;
  # 0 = every step in one program); 5 is evaluation.DEFAULT_CHUNK_SIZE.
  c.eval = dict(num_examples=int(args["n"]), batch_size=512,
                attack=_attack(args), chunk_size=5)
  c.ood = dict(corruptions=args["ood"],
               severities=tuple(int(d) for d in str(args["sev"])),
               source="generated", data_dir="",
               num_examples=0,   # 0: the same points as eval.num_examples
               batch_size=0)     # 0: eval.batch_size
  if args.get("smoke"):
    c.eval.update(num_examples=64, batch_size=32)
    if "steps" in c.eval.attack:
      c.eval.attack.steps = 2
  return c


def _attack(args: dict) -> ml_collections.ConfigDict:
  """The ``attack`` arg's block: its registered parameters, with ``steps``,
  ``restarts`` and ``eps`` (in /255 units) from the arg where it has them."""
  from robustjax import attacks  # local: configs load light
  name = str(args["attack"])
  if name == "pgd":
    steps = 20 if int(args["steps"]) < 0 else int(args["steps"])
    return common.pgd_attack(steps, eps=float(args["eps"]) / 255,
                             restarts=int(args["restarts"]))
  params = {"eps": float(args["eps"]) / 255}
  defaults = attacks.defaults(name)
  if int(args["steps"]) >= 0 and "steps" in defaults:
    params["steps"] = int(args["steps"])
  if "restarts" in defaults:
    params["restarts"] = int(args["restarts"])
  return common.attack_config(name, **params)
