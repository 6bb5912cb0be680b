r"""Adaptive smoothing: mix a standard and a robust checkpoint in output space.

Three variants (the word after the colon):

``fixed`` (default): the fixed-weight mixture over a grid of ``a``::

  python launch.py --config=configs/smoothing.py \
      --config.checkpoint_std=workdirs/interp/standard \
      --config.checkpoint_rob=workdirs/exp_fast_at --workdir=workdirs/smooth

  prints ``a 0.80: clean X% | autoattack Y% | pgd20_std Z% | pgd20_rob W% |
  worst V% | certified C% (n=1000)`` per ``a``; ``report.json`` holds the
  curve.

``train``: the mixing network with the reference's recipe (both models
frozen)::

  python launch.py --config=configs/smoothing.py:train \
      --config.checkpoint_std=workdirs/interp/standard \
      --config.checkpoint_rob=workdirs/exp_fast_at --workdir=workdirs/mixer

  prints ``batch i/N: loss L (bce B, ce C) T s`` and a clean check; writes
  the mixer checkpoint and ``report.json``.

``adaptive``: the adaptive mixture, attacked end to end::

  python launch.py --config=configs/smoothing.py:adaptive \
      --config.mixer_path=workdirs/mixer --workdir=workdirs/mixer_eval

  prints ``adaptive: clean X% | autoattack Y% | ... | a mean M in [lo,
  hi]``; ``report.json``.

Arg keys: ``n=N`` test points (default 1000), ``alphas=0+0.5+0.9+1``
(fixed), ``aa=standard|ce_t`` (the full cascade, or APGD-CE and APGD-T
only), ``batches=N`` (train: clean batches), ``width=W`` (train: the mixing
network's channel multiplier, 1.0 = the reference's), ``smoke`` (a test of
the plumbing, not a measurement: tiny attacks and 32 points; about a minute
on a CPU for small checkpoints).
"""

import ml_collections

from configs import common

# The reference's released CIFAR-10 model: temperatures and evaluation
# constants (gamma (2, 1.05), a in [0.96, 1.00]).
STD_SCALE, ROB_SCALE = 1.2, 0.3
EVAL_CONSTANTS = dict(gamma_scale=2.0, gamma_bias=1.05, alpha_scale=0.04,
                      alpha_bias=0.96)


def _evaluation(c, args, smoke: bool) -> None:
  """AutoAttack and the transfer attacks, as the fixed and adaptive
  variants share them."""
  c.num_examples = 32 if smoke else int(args["n"])
  c.batch_size = 32 if smoke else 500
  c.chunk_size = 5
  aa_attacks = "apgd-ce,apgd-t" if args["aa"] == "ce_t" else ""
  c.autoattack = dict(
      enabled=True, version="custom" if aa_attacks else "standard",
      attacks=aa_attacks, eps=common.EPS, norm="linf", apgd_steps=100,
      apgd_restarts=1, eot_iter=0, n_target_classes=9, fab_steps=100,
      square_queries=5000, seed=0)
  # PGD-20 with step 0.0027, the reference's PGD evaluation, aimed at one
  # base model alone.
  c.transfer = dict(enabled=True, attack=common.pgd_attack(
      20, step_size=0.0027))
  if smoke:
    c.autoattack.update(version="custom", attacks="apgd-ce,apgd-t",
                        apgd_steps=4, n_target_classes=2)
    c.transfer.attack.steps = 2
    c.chunk_size = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, n=1000, alphas="", aa="standard", batches=0,
                          width=1.0)
  smoke = bool(args.get("smoke"))
  variant = "train" if args.get("train") else (
      "adaptive" if args.get("adaptive") else "fixed")
  c = common.checkpoint_task({"fixed": "smoothing", "train": "smoothing_train",
                              "adaptive": "smoothing_adaptive"}[variant])
  del c["checkpoint_path"]
  c.checkpoint_std = ""
  c.checkpoint_rob = ""
  if variant == "fixed":
    grid = args["alphas"] or ("0+0.5+0.6+0.7+0.8+0.9+0.95+1" if not smoke
                              else "0+0.9+1")
    c.alphas = tuple(float(a) for a in grid.split("+"))
    c.std_scale, c.rob_scale = STD_SCALE, ROB_SCALE
    _evaluation(c, args, smoke)
  elif variant == "adaptive":
    c.mixer_path = ""
    c.eval_constants = dict(source="checkpoint", **EVAL_CONSTANTS)
    _evaluation(c, args, smoke)
  else:
    _train(c, args, smoke)
  return c


def _train(c, args, smoke: bool) -> None:
  """The reference's CIFAR-10 V4 recipe (cifar10_edm_apgd): 3 epochs of
  batches of 200, lr 5e-5, loss (1.5, 0, 0.3), weights (1, 1), accum 4."""
  c.std_scale, c.rob_scale = STD_SCALE, ROB_SCALE
  c.mixer = dict(width=float(args["width"]), std_layers=("stage1", "stage2"),
                 rob_layers=("stage1", "stage2"))
  c.train_constants = dict(gamma_scale=2.0, gamma_bias=0.4)
  c.eval_constants = dict(EVAL_CONSTANTS)
  c.attack = dict(eps=common.EPS, eps_factor=(0.4, 1.1), steps_df=75.0,
                  max_steps=0, loss_weight_max=0.4, n_targets=9, rho=0.75)
  c.loss = dict(c_bce=1.5, c_ce=0.0, c_prod=0.3, scale_clean=1.0,
                scale_ada=1.0)
  c.optimizer = dict(lr=5e-5, weight_decay=1e-5, clip_norm=10.0, accum=4)
  c.batch_size = 200
  c.num_batches = int(args["batches"]) or 3 * (50000 // 200)
  c.log_every = 10
  c.eval = dict(num_examples=int(args["n"]), batch_size=500)
  if smoke:
    c.mixer.width = 1 / 64
    c.attack.update(steps_df=2.0, max_steps=3, n_targets=1)
    c.batch_size, c.num_batches, c.log_every = 8, 2, 1
    c.eval.update(num_examples=32, batch_size=32)
