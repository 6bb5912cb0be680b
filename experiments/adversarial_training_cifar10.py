r"""Adversarial training on the embedded CIFAR-10 in about an hour on 2 CPU cores.

  .venv/bin/python experiments/adversarial_training_cifar10.py \
      --workdir=workdirs/exp_fast_at

Recipe (configs/at.py:fgsm_rs, scaled to a CPU): fast AT (FGSM with random
start, step 10/255, eps 8/255; Wong et al. 2020) of a ResNet-18 of width 0.25
(0.7M parameters) for 15 epochs with the cyclic learning rate (peak 0.2),
batch 128, weight decay 5e-4. 1,000 training images are held out as a
validation split; PGD-10 accuracy on it is measured every epoch and the best
epoch is kept (early stopping against catastrophic overfitting, as the fast-AT
paper does). At the end both the last and the best checkpoints are evaluated
on all 10,000 test images with PGD-20 (L-inf 8/255, step 2/255, random start).

Prints one line per evaluation and writes
``experiments/results/<name>.json`` with the test figures, the config and the
wall time. Pass ``--objective=pgd_at --epochs=N`` for PGD-10 AT instead
(about 3.5x slower per epoch on this machine).
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import at as at_config  # noqa: E402
from configs import common  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/exp_fast_at", "Run folder.")
_OBJECTIVE = flags.DEFINE_enum("objective", "fgsm_rs",
                               ["fgsm_rs", "pgd_at", "trades"],
                               "Training objective.")
_EPOCHS = flags.DEFINE_float("epochs", 15.0, "Training epochs.")
_WIDTH = flags.DEFINE_float("width", 0.25, "ResNet-18 width multiplier.")
_TEST_EXAMPLES = flags.DEFINE_integer(
    "test_examples", 0, "Test points for the final PGD-20 (0 = all 10,000).")
_RESULTS = flags.DEFINE_string(
    "results", "", "Output JSON (default experiments/results/<objective>_"
    "resnet18_w<width>.json).")


def make_config():
  c = at_config.get_config(
      f"{_OBJECTIVE.value},model=resnet18,width={_WIDTH.value}")
  c.num_epochs = _EPOCHS.value
  c.batch_size = 128
  c.progress_bar = False
  c.log_every = 100
  c.dataset.val_size = 1000
  if _OBJECTIVE.value == "pgd_at":
    c.optimizer.update(lr=0.1, schedule="piecewise", boundaries=(0.5, 0.75))
  elif _OBJECTIVE.value == "trades":
    c.objective.attack.update(step_size=2 / 255, steps=10)
    c.optimizer.update(lr=0.1, schedule="piecewise", boundaries=(0.5, 0.75))
  steps_per_epoch = (50000 - 1000) // c.batch_size
  c.eval.update(every_steps=steps_per_epoch, num_examples=1000,
                batch_size=512, attack=common.pgd_attack(10))
  c.final_eval.update(num_examples=_TEST_EXAMPLES.value, batch_size=512,
                      attack=common.pgd_attack(20))
  c.checkpoint.update(every_steps=steps_per_epoch, max_to_keep=2,
                      best_metric="adv_acc")
  return c


def main(argv):
  del argv
  from robustjax import console, evaluation, tasks
  from configs import evaluate as evaluate_config
  console.quiet_third_party_info()
  start = time.time()
  config = make_config()
  report = tasks.run(config, _WORKDIR.value)
  # The early-stopped model: the best validation PGD-10 checkpoint.
  eval_cfg = evaluate_config.get_config(f"steps=20,n={_TEST_EXAMPLES.value}")
  eval_cfg.checkpoint_path = _WORKDIR.value
  eval_cfg.best = True
  best = tasks.run(eval_cfg, os.path.join(_WORKDIR.value, "eval_best"))
  results = {
      "recipe": f"{_OBJECTIVE.value}, resnet18 width {_WIDTH.value}, "
                f"{_EPOCHS.value:g} epochs, embedded CIFAR-10 (JPEG q75)",
      "final": {"clean_acc": report["test_clean_acc"],
                "pgd20_acc": report["test_adv_acc"],
                "num_examples": report["test_num_examples"],
                "step": report["steps"]},
      "best_val_checkpoint": {"clean_acc": best["clean_acc"],
                              "pgd20_acc": best["adv_acc"],
                              "num_examples": best["num_examples"],
                              "step": best["checkpoint_step"]},
      "attack": "PGD-20, L-inf eps 8/255, step 2/255, random start, CE",
      "wall_time_min": round((time.time() - start) / 60, 1),
      "command": " ".join(["python"] + sys.argv),
      "config": config.to_dict(),
  }
  path = _RESULTS.value or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"{_OBJECTIVE.value}_resnet18_w{_WIDTH.value:g}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2, default=str)
    f.write("\n")
  print(f"final: {evaluation.format_accuracies(dict(report_accs(report)))}")
  print(f"best-val checkpoint (step {best['checkpoint_step']}): "
        f"{evaluation.format_accuracies(best)}")
  print(f"wrote {path}")


def report_accs(report):
  return {"clean_acc": report["test_clean_acc"],
          "adv_acc": report["test_adv_acc"], "attack": report["test_attack"],
          "num_examples": report["test_num_examples"]}


if __name__ == "__main__":
  app.run(main)
