r"""Robust weight signatures on the embedded CIFAR-10, CPU-sized.

  nohup .venv/bin/python experiments/rws_cifar10.py --root=workdirs/rws \
      > workdirs/rws.log 2>&1 &

Stages (each skipped when its workdir already has a report.json, so a
killed run resumes):

1. ``pre``: theta_pre, VGG-16 without BN (width ``--width``, default 0.125:
   channels 8..64, 0.23M parameters), trained from scratch on clean
   CIFAR-10 for ``--pre_epochs`` (the reference starts from ImageNet
   weights, which this repository does not have).
2. ``clean`` and one model per corruption in ``--corruptions`` (severity
   5, 100% of the training images corrupted), each fine-tuned from
   theta_pre for ``--ft_epochs`` with the reference's optimiser (SGD 0.01,
   momentum 0.9, wd 5e-4, x0.1 at 40% and 80%).
3. ``analysis``: the ``rws`` task with the first ``--k`` layers, ``--bits``
   quantization, on the first ``--n`` test points.

Writes ``experiments/results/rws_cifar10.json`` (the task's report plus the
settings) and copies the three PNGs next to it.
"""

import json
import os
import shutil
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from configs import rws as rws_config  # noqa: E402

_ROOT = flags.DEFINE_string("root", "workdirs/rws", "Folder of the runs.")
_WIDTH = flags.DEFINE_float("width", 0.125, "VGG-16 width multiplier.")
_CORR = flags.DEFINE_string("corruptions",
                            "gaussian_noise+contrast+fog+pixelate",
                            "Corruptions, joined by '+'.")
_PRE = flags.DEFINE_float("pre_epochs", 6.0, "Epochs for theta_pre.")
_FT = flags.DEFINE_float("ft_epochs", 2.0, "Fine-tuning epochs per model.")
_K = flags.DEFINE_integer("k", 7, "Layers kept in each signature.")
_BITS = flags.DEFINE_integer("bits", 8, "Quantization bits (0 = float32).")
_N = flags.DEFINE_integer("n", 500, "Test points for the analysis.")


def _done(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "report.json"))


def _train(arg: str, workdir: str, epochs: float, **overrides) -> None:
  from robustjax import tasks
  if _done(workdir):
    print(f"skip {workdir} (report.json exists)", flush=True)
    return
  c = rws_config.get_config(f"{arg},model=vgg16,width={_WIDTH.value}")
  c.num_epochs = epochs
  c.progress_bar = False
  c.log_every = 100
  c.eval.update(every_steps=0, num_examples=1000, batch_size=500)
  c.final_eval.update(num_examples=1000, batch_size=500)
  c.checkpoint.update(every_steps=400, best_metric="")
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  t = time.time()
  report = tasks.run(c, workdir)
  print(f"{workdir}: test clean {100 * report['test_clean_acc']:.2f}% "
        f"({time.time() - t:.0f} s)", flush=True)


def main(argv) -> None:
  del argv
  from robustjax import tasks
  root = _ROOT.value.rstrip("/")
  names = [n for n in _CORR.value.split("+") if n]
  # No BN: a short warm-up keeps the from-scratch start stable.
  _train("pre", f"{root}/pre", _PRE.value,
         **{"optimizer.lr": 0.02, "optimizer.warmup_steps": 200})
  _train(f"clean,init={root}/pre", f"{root}/clean", _FT.value)
  for name in names:
    _train(f"corruption={name},init={root}/pre", f"{root}/{name}",
           _FT.value)
  c = rws_config.get_config(
      f"analyze,root={root},corruptions={'+'.join(names)},k={_K.value},"
      f"bits={_BITS.value},n={_N.value}")
  t = time.time()
  report = tasks.run(c, f"{root}/analysis")
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  os.makedirs(out, exist_ok=True)
  report["settings"] = {"width": _WIDTH.value, "pre_epochs": _PRE.value,
                        "ft_epochs": _FT.value, "k": _K.value,
                        "bits": _BITS.value, "n": _N.value,
                        "corruptions": names,
                        "analysis_seconds": round(time.time() - t, 1)}
  with open(os.path.join(out, "rws_cifar10.json"), "w") as f:
    json.dump(report, f, indent=1)
  for png in ("depth_profile", "similarity", "scaling"):
    shutil.copy(f"{root}/analysis/{png}.png",
                os.path.join(out, f"rws_cifar10_{png}.png"))
  for c_name, row in report["per_corruption"].items():
    print(f"{c_name}: clean model {100 * row['target_acc']:.1f}% -> patched "
          f"{100 * row['patched_acc']:.1f}% (robust model "
          f"{100 * row['robust_acc']:.1f}%), clean after patch "
          f"{100 * row['patched_clean_acc']:.1f}%", flush=True)


if __name__ == "__main__":
  app.run(main)
