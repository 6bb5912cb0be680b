r"""The main job: fast adversarial training of a CPU-sized ResNet-18 on the
embedded CIFAR-10, then PGD-20 evaluation. About 7 minutes on 2 CPU cores.

  python launch.py --config=configs/quickstart.py --workdir=workdirs/quickstart \
      --cpu_devices=2
  (or simply: make quickstart; --cpu_devices=2 splits a 2-core host into two
  JAX devices, about 1.35x faster here; without it, about 10-13 minutes)

What it does: FGSM with random start (Wong et al. 2020, "fast AT": uniform
start in the 8/255 ball, one step of 10/255) on a ResNet-18 of width 0.25
(channels 16/32/64/128, 0.7M parameters), batch 128, 3 epochs, SGD momentum
0.9, weight decay 5e-4, cyclic learning rate peaking at 0.2. Every 390 steps
it prints clean and PGD-10 accuracy on the first 1,000 test points, and at
the end clean and PGD-20 (L-inf 8/255, step 2/255, random start) accuracy on
the first 1,000 test points.

It prints clean / PGD-10 lines per epoch (``step 390 test: clean 33.10% |
pgd10 23.20% (n=1000)``) and ends with ``report: workdirs/quickstart/
report.json {'test_clean_acc': ..., 'test_adv_acc': ...}``, about 49% clean
and 27% PGD-20 (the README gives the measured run). Rerunning the same
command resumes from the last checkpoint instead of starting again;
``:smoke`` shrinks it to under a minute.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg)
  c = common.base_config()
  c.model.update(name="resnet18", width=0.25)
  common.set_objective(c, "fgsm_rs", step_size=10 / 255)
  c.batch_size = 128
  c.num_epochs = 3.0
  c.optimizer.update(lr=0.2, weight_decay=5e-4, schedule="cyclic",
                     peak_fraction=0.4)
  c.log_every = 50
  c.eval.update(every_steps=390, num_examples=1000, batch_size=512,
                attack=common.pgd_attack(10))
  c.final_eval.update(num_examples=1000, batch_size=512,
                      attack=common.pgd_attack(20))
  c.checkpoint.update(every_steps=200, max_to_keep=2, best_metric="adv_acc")
  if args.get("smoke"):
    common.shrink_for_smoke(c)
  return c
