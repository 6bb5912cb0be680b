r"""RiFT on the fast-AT ResNet-18 (width 0.25) of the embedded CIFAR-10.

  nohup .venv/bin/python experiments/rift_cifar10.py \
      --robust=workdirs/exp_fast_at --workdir=workdirs/exp_rift \
      > workdirs/exp_rift.log 2>&1 &

Runs the ``rift`` task (configs/rift.py) scaled down for a shared 2-core CPU:
MRC on ``--mrc_n`` validation points made adversarial once (PGD-10, step
2/225, the reference's), ``--mrc_epochs`` ascent epochs of ``--mrc_steps``
steps each (the reference's 20; the batch size follows from the set size,
or ``--mrc_steps=0 --mrc_batch=N`` fixes it instead); fine-tuning of the
lowest-MRC kernel for 10 epochs of ``--ft_steps`` batches of 128 (lr 1e-3,
x0.1 at epoch 5, BN statistics re-estimated); 11 alphas evaluated on
``--select_n`` held-out validation points (the 1,000 training points the AT
run held out, val_seed 0: never trained on) with PGD-10; then AT vs AT+RiFT
on the first ``--n`` test points: clean, PGD-20 (step 2/255) and OOD
(``rift18``, all 5 severities, generated on the fly).

Writes ``experiments/results/rift_cifar10.json`` and prints the MRC table
and a markdown table with the paper's CIFAR-10 ResNet-18 row beside it.
``--mrc_only`` stops after the MRC table (same adversarial set, same
ascent) and writes only it, e.g. to compare ascent plans on one checkpoint:

  .venv/bin/python experiments/rift_cifar10.py --mrc_only \
      --mrc_steps=0 --mrc_batch=128 --results=rift_cifar10_mrc_batch128.json
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from configs import common, rift as rift_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("robust", "workdirs/exp_fast_at", "AT workdir.")
flags.DEFINE_string("workdir", "workdirs/exp_rift", "Output workdir.")
flags.DEFINE_integer("n", 500, "Test points for before/after.")
flags.DEFINE_integer("mrc_n", 256, "Validation points of the MRC set.")
flags.DEFINE_integer("mrc_epochs", 5, "MRC ascent epochs (reference 10).")
flags.DEFINE_integer("mrc_steps", 20,
                     "MRC ascent steps per epoch (reference 20; 0 = use "
                     "--mrc_batch).")
flags.DEFINE_integer("mrc_batch", 0,
                     "MRC batch size with --mrc_steps=0 (0 = derived).")
flags.DEFINE_integer("select_n", 500, "Validation points for selection.")
flags.DEFINE_integer("ft_steps", 20, "Steps per fine-tuning epoch (0=all).")
flags.DEFINE_integer("ood_n", 500, "Test points per corruption/severity.")
flags.DEFINE_string("ood", "rift18", "Corruption list or none.")
flags.DEFINE_string("module", "lowest", "lowest | middle | a module path.")
flags.DEFINE_string("bn", "train", "train (reference) | keep_a (ablation).")
flags.DEFINE_bool("mrc_only", False, "Stop after the MRC table.")
flags.DEFINE_string("results", "rift_cifar10.json",
                    "File name under experiments/results/.")

PAPER = {"at": (81.46, 73.56, 53.63), "rift": (83.44, 75.69, 53.65)}


def main(_):
  from robustjax import tasks
  config = rift_config.get_config(f"n={FLAGS.n},steps=20,ood={FLAGS.ood},"
                                  f"module={FLAGS.module},bn={FLAGS.bn}")
  config.checkpoint_path = FLAGS.robust
  config.eval.attack = common.pgd_attack(20)  # step 2/255, for the table
  config.eval.batch_size = 250
  config.mrc.update(num_examples=FLAGS.mrc_n, epochs=FLAGS.mrc_epochs,
                    steps_per_epoch=FLAGS.mrc_steps,
                    batch_size=FLAGS.mrc_batch)
  config.select_num_examples = FLAGS.select_n
  config.finetune.steps_per_epoch = FLAGS.ft_steps
  config.ood.num_examples = FLAGS.ood_n
  start = time.time()
  report = mrc_only(config) if FLAGS.mrc_only else tasks.run(
      config, FLAGS.workdir)
  first = report["mrc"][0]
  print(f"\nMRC (ascending; {first['ascent_steps']} ascent steps of at most "
        f"{first['batch_size']} points): module | MRC | robust-acc drop "
        "(points) | largest ||delta||/||w0|| before a projection")
  for r in report["mrc"]:
    print(f"  {r['module']:28s} {r['mrc']:8.4f} {100 * r['acc_drop']:7.2f} "
          f"{r['ascent_norm']:7.3f}")
  if FLAGS.mrc_only:
    write(report, start)
    return
  ood = "ood_acc" in {k[len("before_"):] for k in report
                      if k.startswith("before_")}

  def row(label, prefix):
    o = f"{100 * report[prefix + 'ood_acc']:.2f}" if ood else "n/a"
    return (f"| {label} | {100 * report[prefix + 'clean_acc']:.2f} | {o} | "
            f"{100 * report[prefix + 'adv_acc']:.2f} |")
  print("\n| model | clean | OOD | PGD-20 |\n|---|---|---|---|")
  print(row("fast-AT ResNet-18 w0.25 (ours)", "before_"))
  print(row(f"+RiFT ({report['module']}, alpha {report['alpha']:.1f})",
            "after_"))
  print("| paper AT ResNet-18 (PGD-10) | %.2f | %.2f | %.2f |" % PAPER["at"])
  print("| paper +RiFT | %.2f | %.2f | %.2f |" % PAPER["rift"])
  write(report, start)


def write(report, start):
  out = {"command": " ".join(sys.argv), "flags": {
      k: FLAGS[k].value for k in ("robust", "workdir", "n", "mrc_n",
                                  "mrc_epochs", "mrc_steps", "mrc_batch",
                                  "select_n", "ft_steps",
                                  "ood_n", "ood", "module", "results",
                                  "bn")},
         "paper": PAPER, "wall_time_s": round(time.time() - start, 1),
         **{k: v for k, v in report.items()}}
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      FLAGS.results)
  with open(path, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True, default=float)
  print("wrote", path)


def mrc_only(config):
  """The MRC stage of the ``rift`` task alone: the same held-out points,
  adversarial set and ascent; returns ``{"mrc": table, ...}``."""
  from robustjax import attacks, rift
  from robustjax.tasks import common as task_common
  ckpt = task_common.restore(config, 0)
  _, _, held_out = task_common.checkpoint_splits(
      ckpt.meta, config.dataset, require_holdout=True,
      path=config.checkpoint_path)
  mesh = task_common.mesh_of(config)
  m = config.mrc
  n = int(m.num_examples) or len(held_out)
  images, labels = rift.adversarial_set(
      ckpt.model.apply, ckpt.variables, held_out, mesh,
      attack=attacks.build(m.attack), num_examples=n,
      batch_size=int(config.eval.batch_size), seed=int(config.seed))
  order = task_common.layer_order(ckpt.model, held_out.images.shape[1:])
  table = rift.mrc(ckpt.model.apply, ckpt.variables, images, labels,
                   modules=rift.kernel_modules(ckpt.variables["params"],
                                               order),
                   epsilon=float(m.epsilon), epochs=int(m.epochs),
                   lr=float(m.lr), steps_per_epoch=int(m.steps_per_epoch),
                   batch_size=int(m.batch_size), seed=int(config.seed),
                   mesh=mesh, log=print)
  return {"mrc": table, "checkpoint": config.checkpoint_path,
          "mrc_num_examples": n}


if __name__ == "__main__":
  app.run(main)
