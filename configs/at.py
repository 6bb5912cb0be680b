r"""Adversarial training recipes from the papers (CIFAR-10, L-inf 8/255).

Launch (the arg picks the objective; add ``smoke`` for a <1 minute check):

  python launch.py --config=configs/at.py:pgd_at --workdir=workdirs/pgd_at
  python launch.py --config=configs/at.py:trades --workdir=workdirs/trades
  python launch.py --config=configs/at.py:mart   --workdir=workdirs/mart
  python launch.py --config=configs/at.py:mart_wrn --workdir=workdirs/mart_wrn
  python launch.py --config=configs/at.py:fgsm_rs --workdir=workdirs/fast_at
  python launch.py --config=configs/at.py:trades,smoke --workdir=/tmp/smoke

Recipes (the reference script each one follows):

  pgd_at    PGD-10 AT (Madry et al.; eps 8/255, step 2/255) with the
            baseline schedule of Pang et al.'s P2333/Bag-of-Tricks-for-AT
            train_cifar.py (itself built on Rice et al.'s
            robust_overfitting train_cifar.py): lr 0.1 x0.1 at epochs 100
            and 105 of 110, wd 5e-4, eval-mode BatchNorm in the attack (its
            --BNeval); objective.attack_bn=train attacks in train mode as
            Rice et al.'s script.
  trades    yaodongyu/TRADES train_trades_cifar10.py.
  mart      YisenWang/MART train_resnet.py (ResNet-18).
  mart_wrn  YisenWang/MART train_wideresnet.py (WRN-34-10).
  fgsm_rs   locuslab/fast_adversarial CIFAR10/train_fgsm.py.
  standard  clean training, cosine lr, 100 epochs.

``epochs=N`` sets the length of a trades or mart/mart_wrn run and keeps the
reference's learning-rate drops at its epochs 75, 90 and 100 (those that fall
inside the run); overriding ``--config.num_epochs`` instead would scale the
drops, which are fractions of training. Epochs are counted from 0 here and
from 1 in the references: the reference's epoch e is epoch e - 1 here.

Other arg keys: ``model=NAME``, ``width=W``, ``dataset=cifar10|cifar100|svhn``
(``source=tfds`` for anything but the embedded CIFAR-10), ``dtype=bfloat16``
(mixed precision for the training step, attack included; parameters,
optimizer state and loss stay float32, and evaluation stays float32 unless
``--config.eval.dtype=bfloat16``; a GPU/TPU option: on a CPU it is hardly
faster, see docs/design.md).

The full recipes are GPU/TPU jobs (110 epochs of PGD-10 on a ResNet-18 is
about 2e17 FLOP). Expected results on real CIFAR-10 (papers / reference
code): PGD-AT ResNet-18 about 84 clean / 52 PGD-20; TRADES (beta 6)
ResNet-18 about 82 / 53; MART ResNet-18 about 82 / 54; FGSM-RS PreAct-18
about 86 / 46 (PGD-50-10). On this repository's JPEG copy of CIFAR-10 expect
slightly lower numbers (the data caveat in docs/design.md).

It prints a progress bar, a ``step N val/test: clean X% | pgd10 Y%`` line at
each evaluation and, at the end, ``report: WORKDIR/report.json {...}``.
"""

from collections.abc import Sequence

import ml_collections

from configs import common

RECIPES = ("pgd_at", "trades", "mart", "mart_wrn", "fgsm_rs", "standard")
# The epochs (counted from 1) at which TRADES's and MART's scripts multiply
# the lr by 0.1 once more: adjust_learning_rate's `epoch >= 75`, `>= 90`,
# `>= 100` in train_trades_cifar10.py, train_resnet.py and
# train_wideresnet.py alike.
REFERENCE_DROP_EPOCHS = (75, 90, 100)


def reference_boundaries(num_epochs: int,
                         drop_epochs: Sequence[int] = REFERENCE_DROP_EPOCHS
                         ) -> tuple[float, ...]:
  """The ``optimizer.boundaries`` (fractions of training) of the drops.

  A reference script sets the lr of its epoch ``e`` (1..num_epochs) before
  training it, so a drop "at epoch >= 75" first applies to the 75th epoch:
  epoch 74 counted from 0, i.e. step ``74 * steps_per_epoch`` here. Drops at
  or after the end of the run are left out.
  """
  return tuple((e - 1) / num_epochs for e in drop_epochs
               if e - 1 < num_epochs)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, model="resnet18", width=1.0,
                          dataset="cifar10", source="embedded",
                          dtype="float32", epochs=0)
  recipe = next((k for k in RECIPES if args.get(k)), "pgd_at")
  objective = "mart" if recipe == "mart_wrn" else recipe
  epochs = int(args["epochs"])
  c = common.base_config()
  c.model.update(name=args["model"], width=float(args["width"]),
                 dtype=args["dtype"])
  c.dataset.update(name=args["dataset"], source=args["source"])
  common.set_objective(c, objective)
  c.batch_size = 128
  c.num_epochs = 110.0
  # PGD-AT (Pang et al.'s baseline): lr 0.1, x0.1 at epochs 100 and 105 of
  # 110.
  c.optimizer.update(lr=0.1, weight_decay=5e-4, schedule="piecewise",
                     boundaries=(100 / 110, 105 / 110), decay=0.1)
  if recipe == "trades":
    # yaodongyu/TRADES train_trades_cifar10.py: 76 epochs, lr 0.1 x0.1 at
    # its epochs 75, 90 and 100 (so the last two of 76 run at 0.01), wd 2e-4,
    # 10 steps of 0.007 from x + 0.001 N(0, I), beta 6. We keep eps = 8/255
    # (0.0314), not the script's 0.031.
    c.num_epochs = float(epochs or 76)
    common.set_objective(c, objective, step_size=0.007, steps=10, beta=6.0)
    c.optimizer.update(weight_decay=2e-4, boundaries=reference_boundaries(
        int(c.num_epochs)))
  elif recipe == "mart":
    # YisenWang/MART train_resnet.py (ResNet-18): 120 epochs, lr 0.01 x0.1
    # at its epochs 75, 90 and 100, wd 3.5e-3, beta 5, eps 0.031, 10 steps
    # of 0.007 (CE-PGD from x + 0.001 N(0, I)).
    c.num_epochs = float(epochs or 120)
    common.set_objective(c, objective, eps=0.031, step_size=0.007, steps=10,
                         beta=5.0)
    c.optimizer.update(lr=0.01, weight_decay=3.5e-3,
                       boundaries=reference_boundaries(int(c.num_epochs)))
  elif recipe == "mart_wrn":
    # YisenWang/MART train_wideresnet.py (WRN-34-10): 90 epochs, lr 0.1
    # x0.1 at its epochs 75 and 90 (the last epoch runs at 0.001), wd 7e-4,
    # beta 6, eps 0.031, 10 steps of 0.007.
    c.num_epochs = float(epochs or 90)
    common.set_objective(c, objective, eps=0.031, step_size=0.007, steps=10,
                         beta=6.0)
    c.optimizer.update(lr=0.1, weight_decay=7e-4,
                       boundaries=reference_boundaries(int(c.num_epochs)))
    if "model" not in (arg or ""):
      c.model.name = "wrn34_10"
  elif recipe == "fgsm_rs":
    # locuslab/fast_adversarial train_fgsm.py: alpha 10/255, 15 epochs,
    # cyclic lr peaking at 0.2, wd 5e-4, PreAct ResNet-18.
    c.num_epochs = 15.0
    common.set_objective(c, objective, step_size=10 / 255)
    c.optimizer.update(lr=0.2, schedule="cyclic", peak_fraction=0.5)
    if "model" not in (arg or ""):
      c.model.name = "preact_resnet18"
  elif recipe == "standard":
    c.num_epochs = 100.0
    c.optimizer.update(schedule="cosine")
  if epochs and recipe not in ("trades", "mart", "mart_wrn"):
    # The other recipes' drops are fractions of training already.
    c.num_epochs = float(epochs)
  c.eval.every_steps = 2000
  if args.get("smoke"):
    common.shrink_for_smoke(c)
  return c
