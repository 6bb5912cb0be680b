r"""RiFT: fine-tune the least robust-critical module of a robust checkpoint.

  python launch.py --config=configs/rift.py \
      --config.checkpoint_path=workdirs/exp_fast_at --workdir=workdirs/rift

Stages (docs/rift.md): MRC of every conv/dense kernel on a fixed PGD set
(reference: eps 0.1, 10 epochs of 20 lr-1 ascent steps, projection per
epoch), the module with the lowest MRC (``module=middle`` for the
reference's "prefer a middle layer" rule, ``module=PATH`` for an explicit
one), 10 epochs of fine-tuning that kernel alone on clean data (lr 1e-3,
x0.1 at epoch 5, BatchNorm statistics re-estimated: ``bn=keep_a`` keeps the
robust model's), then 11 alphas from robust (0) to fine-tuned (1), choosing
the best clean accuracy
whose PGD accuracy stays within ``tol`` (default 0.1 points) of the robust
model's. Selection (best epoch, alpha, and the MRC set) uses, by default,
the training points the checkpoint's own run held out (its
``dataset.val_size``/``val_seed``, saved in the checkpoint: train it with
``--config.dataset.val_size=N``); fine-tuning uses the rest, the points it
trained on. A checkpoint that held out nothing is refused unless ``paper``
is given, which selects on the test set as the reference does.

It logs one line per module (``mrc stage2/block2/conv2: 0.0123 ...``), per
fine-tuning epoch and per alpha, then ``before: clean X% pgd Y% | after:
clean X% pgd Y%``, and writes WORKDIR/report.json, mrc.csv, mrc.png,
interpolation.png, the fine-tuned checkpoint (WORKDIR/finetuned) and the
final model (WORKDIR/checkpoints, readable by configs/evaluate.py).

Arg keys: ``n=N`` test points for before/after (0 = all), ``steps=N`` PGD
steps of the evaluation, ``module=lowest|middle|PATH``, ``bn=train|keep_a``,
``paper``, ``ood=rift18|benchmark15|none``, ``lr=X``, ``epochs=N``,
``smoke``.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, n=1000, steps=10, module="lowest", bn="train",
                          ood="none", lr=1e-3, epochs=10)
  c = common.checkpoint_task("rift")
  c.selection = "paper" if args.get("paper") else "val"
  # The selection split is the checkpoint's own held-out one (its saved
  # dataset.val_size/val_seed); val_size N > 0 only checks that it holds N.
  c.val_size = 0
  c.select_num_examples = 0  # points of the selection split used (0 = all)
  c.min_robust_acc = 0.15    # warn below this PGD accuracy (AT models: 23-55%)
  c.eval = dict(num_examples=int(args["n"]), batch_size=500,
                # Reference evaluation: PGD-10, step 2/225, random start.
                attack=common.pgd_attack(int(args["steps"]),
                                         step_size=2 / 225))
  # The attack of the alpha curve (selection); eval.attack is the before /
  # after one. Both default to the reference's PGD-10 at step 2/225; any
  # registered attack may replace them (common.attack_config("apgd-ce")).
  c.select_attack = common.pgd_attack(10, step_size=2 / 225)
  module = str(args["module"])
  choice = module if module in ("lowest", "middle") else "path"
  c.module = dict(choice=choice, path="" if choice != "path" else module,
                  middle_fraction=0.25)
  # Ascent: the reference's 20 steps an epoch (batches of 512 over 10,000
  # points) whatever the set's size, the batch size derived from it;
  # batch_size=N with steps_per_epoch=0 fixes the batch size instead.
  c.mrc = dict(epsilon=0.1, epochs=10, lr=1.0, steps_per_epoch=20,
               batch_size=0,
               num_examples=0,  # 0 = the whole selection split
               attack=common.pgd_attack(10, step_size=2 / 225))
  # bn: train (the reference: BatchNorm in training mode, every layer's
  # statistics re-estimated on the clean batches) | keep_a (inference mode,
  # the robust model's statistics kept).
  c.finetune = dict(epochs=int(args["epochs"]), batch_size=128,
                    steps_per_epoch=0, bn=str(args["bn"]), augment=True)
  # SGD momentum 0.9, wd 5e-4 (on the chosen kernel only), x0.1 at half.
  c.optimizer = dict(lr=float(args["lr"]), momentum=0.9, nesterov=False,
                     weight_decay=5e-4, weight_decay_on="all",
                     schedule="piecewise", boundaries=(0.5,), decay=0.1,
                     warmup_steps=0)
  c.alphas = tuple(round(0.1 * i, 1) for i in range(11))
  c.tolerance = 0.001        # 0.1 percentage points
  c.ood = dict(corruptions=str(args["ood"]), severities=(1, 2, 3, 4, 5),
               source="generated", data_dir="", num_examples=0, batch_size=0)
  if args.get("smoke"):
    c.select_num_examples = 32
    c.eval.update(num_examples=32, batch_size=32)
    c.eval.attack.steps = 2
    c.select_attack.steps = 2
    c.mrc.update(epochs=2, steps_per_epoch=2, num_examples=32)
    c.mrc.attack.steps = 2
    c.finetune.update(epochs=2, batch_size=32, steps_per_epoch=2)
    c.alphas = (0.0, 0.5, 1.0)
  return c
