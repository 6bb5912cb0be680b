r"""Interpolating a standard and an adversarially trained ResNet-18 (CIFAR-10).

  .venv/bin/python experiments/interpolation_cifar10.py \
      --standard=workdirs/interp/standard --robust=workdirs/exp_fast_at

Both models are ResNet-18 of width 0.25 trained on the embedded CIFAR-10 from
the same initialisation (seed 0: the training loop derives the initial
weights from the seed alone). ``--robust`` is the fast-AT (FGSM-RS) run of
``experiments/adversarial_training_cifar10.py`` (15 epochs); ``--standard``,
if it holds no checkpoint, is trained here with the same recipe except the
objective (plain cross-entropy) and the length (``--standard_epochs``, 4):

  python launch.py --config=configs/at.py:standard,model=resnet18,width=0.25 \
      --workdir=workdirs/interp/standard --cpu_devices=1 --config.num_epochs=4 \
      --config.dataset.val_size=1000 --config.optimizer.lr=0.2 \
      --config.optimizer.schedule=cyclic --config.optimizer.peak_fraction=0.5

What it measures, on the first ``--n`` test points (default 500):

* the curve ``(1 - alpha) * standard + alpha * robust`` at 11 alphas: clean
  and PGD-10 (L-inf 8/255, step 2/255) accuracy and cross-entropy, with the
  BatchNorm statistics interpolated (``bn=interpolate``) and re-estimated on
  20 training batches of 128 (``bn=recompute``); OOD (corruption) accuracy
  too when ``robustjax.evaluation.evaluate_corruptions`` exists and
  ``--ood`` names a corruption list;
* the clean and adversarial loss barriers of both curves;
* layer-wise adaptive L2 sharpness (rho 0.05, 5 ascent steps, 256 training
  images) of both endpoints and of the midpoint, and its straggler ranking.

Writes ``experiments/results/interpolation_cifar10.{json,png}`` and prints a
markdown table for the README.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_STANDARD = flags.DEFINE_string("standard", "workdirs/interp/standard",
                                "Workdir of the standard model (trained here "
                                "if empty).")
_ROBUST = flags.DEFINE_string("robust", "workdirs/exp_fast_at",
                              "Workdir of the adversarially trained model.")
_STANDARD_EPOCHS = flags.DEFINE_float("standard_epochs", 4.0,
                                      "Epochs when training the standard model.")
_N = flags.DEFINE_integer("n", 500, "Test points per curve point.")
_ALPHAS = flags.DEFINE_integer("alphas", 11, "Points on the alpha grid.")
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", 10, "PGD steps.")
_OOD = flags.DEFINE_string("ood", "benchmark15", "Corruption list for OOD "
                           "accuracy ('none' to skip); used only if "
                           "evaluate_corruptions exists.")
_OOD_SEVERITIES = flags.DEFINE_list("ood_severities", ["3"],
                                    "Corruption severities.")
_SHARPNESS_N = flags.DEFINE_integer("sharpness_examples", 256,
                                    "Training images for the sharpness loss.")
_RHO = flags.DEFINE_float("rho", 0.05, "Sharpness radius (adaptive L2).")
_OUT = flags.DEFINE_string("out", "experiments/results/interpolation_cifar10",
                           "Output path without extension.")


def _train_standard(workdir: str) -> None:
  from configs import at as at_config
  from robustjax import tasks
  c = at_config.get_config("standard,model=resnet18,width=0.25")
  c.seed = 0
  c.num_epochs = _STANDARD_EPOCHS.value
  c.dataset.val_size = 1000
  c.optimizer.update(lr=0.2, schedule="cyclic", peak_fraction=0.5)
  c.eval.every_steps = 0
  c.checkpoint.update(best_metric="", every_steps=382)
  c.final_eval.num_examples = 1000
  c.progress_bar = False
  tasks.run(c, workdir)


def main(argv):
  del argv
  import jax
  import numpy as np
  from configs import common
  from robustjax import attacks, checkpoint, data, evaluation, sharding
  from robustjax.errors import ConfigError
  from robustjax.models import build_model, full_spec
  from robustjax.weightspace import (arithmetic, batchnorm, curves,
                                     interpolate, plots, sharpness, trees)
  start = time.time()
  if not checkpoint.has_checkpoint(os.path.join(_STANDARD.value,
                                                checkpoint.LATEST_DIR)):
    _train_standard(_STANDARD.value)
  if not checkpoint.has_checkpoint(os.path.join(_ROBUST.value,
                                                checkpoint.LATEST_DIR)):
    raise ConfigError(f"no robust model under {_ROBUST.value}; run "
                      "experiments/adversarial_training_cifar10.py first")
  std, rob = checkpoint.load(_STANDARD.value), checkpoint.load(_ROBUST.value)
  spec = std["meta"]["model"]
  if full_spec(spec) != full_spec(rob["meta"]["model"]):
    raise ConfigError(f"models differ: {spec} vs {rob['meta']['model']}")
  seeds = [json.loads(m["meta"]["config"]).get("seed") for m in (std, rob)]
  if seeds[0] != seeds[1]:
    raise ConfigError(f"the runs start from different seeds {seeds}; the "
                      "experiment needs one initialisation")
  model = build_model(spec)
  mesh = sharding.make_mesh()
  test = data.load_split("cifar10", "test")
  train = data.load_split("cifar10", "train")
  va = {"params": std["params"], "batch_stats": std["batch_stats"]}
  vb = {"params": rob["params"], "batch_stats": rob["batch_stats"]}
  order = trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  # The loop's initial weights: init_key is the first of three streams.
  init_key = jax.random.split(jax.random.key(int(seeds[0])), 3)[0]
  init = jax.jit(lambda k: model.init(k, np.zeros((1, 32, 32, 3), np.float32),
                                      train=False))(init_key)

  ood_fn = None
  if _OOD.value != "none":
    from robustjax.data import corruptions
    names = corruptions.resolve(_OOD.value)
    severities = tuple(int(s) for s in _OOD_SEVERITIES.value)

    def ood_fn(variables):
      out = evaluation.evaluate_corruptions(
          model, variables, test, mesh, corruptions=names,
          severities=severities, batch_size=500, num_examples=_N.value)
      return {"ood_acc": out["ood_acc"]}
  eval_fn = curves.make_evaluator(
      model, test, mesh,
      attack=attacks.build(common.pgd_attack(_PGD_STEPS.value)),
      batch_size=500, num_examples=_N.value, ood_fn=ood_fn)
  batches = data.TrainBatches(train, 128, 0, mesh)
  to_float = jax.jit(data.to_float)
  bn_batches = lambda: (to_float(batches.batch(i)["image"])  # noqa: E731
                        for i in range(20))
  alphas = [float(a) for a in np.linspace(0, 1, _ALPHAS.value)]
  results = {"model": spec, "seed": seeds[0], "n_test": _N.value,
             "attack": f"PGD-{_PGD_STEPS.value} Linf 8/255 step 2/255",
             "standard": os.path.abspath(_STANDARD.value),
             "robust": os.path.abspath(_ROBUST.value),
             "standard_step": std["step"], "robust_step": rob["step"],
             "curves": {}, "barriers": {}}
  for mode in ("interpolate", "recompute"):
    print(f"curve, batch_stats={mode}", flush=True)
    curve = curves.interpolation_curve(
        eval_fn, va, vb, alphas, batch_stats=mode,
        stats_fn=batchnorm.flax_stats_fn(model.apply),
        bn_batches=bn_batches, order=order, log=print)
    results["curves"][mode] = curve
    results["barriers"][mode] = {
        kind: curves.loss_barrier(alphas, [p[f"{kind}_loss"] for p in curve])
        for kind in ("clean", "adv")}
    print(mode, results["barriers"][mode], flush=True)

  results["distance_standard_robust"] = arithmetic.layer_distances(
      va["params"], vb["params"], order=order)
  results["distance_from_init"] = {
      name: arithmetic.layer_distances(init["params"], v["params"],
                                       order=order)
      for name, v in (("standard", va), ("robust", vb))}

  images = jax.numpy.asarray(data.to_float(train.images[:_SHARPNESS_N.value]))
  labels = jax.numpy.asarray(train.labels[:_SHARPNESS_N.value])
  mid = interpolate.interpolate_variables(
      va, vb, 0.5, batch_stats="recompute",
      stats_fn=batchnorm.flax_stats_fn(model.apply), batches=bn_batches())
  results["sharpness"] = {}
  for name, v in (("standard", va), ("midpoint", mid), ("robust", vb)):
    t0 = time.time()
    loss_fn = sharpness.classification_loss_fn(model.apply, v["batch_stats"],
                                               images, labels)
    res = sharpness.layer_sharpness(loss_fn, v["params"], rho=_RHO.value,
                                    norm="l2", adaptive=True, steps=5,
                                    order=order)
    ranked = sharpness.rank_layers(res)
    results["sharpness"][name] = {
        "by_layer": {k: r["sharpness"] for k, r in res.items()},
        "loss": next(iter(res.values()))["loss"], **ranked}
    print(f"sharpness {name} ({time.time() - t0:.0f}s): top "
          f"{ranked['ranking'][:5]}; stragglers {ranked['stragglers']}",
          flush=True)
  results["wall_time_min"] = round((time.time() - start) / 60, 1)

  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(results, f, indent=1)
  _figure(results, plots, _OUT.value + ".png")
  print(_table(results))


def _figure(results, plots, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
  for mode, style in (("interpolate", "--"), ("recompute", "-")):
    curve = results["curves"][mode]
    alphas = [p["alpha"] for p in curve]
    for kind, color in (("clean", "tab:blue"), ("adv", "tab:red"),
                        ("ood", "tab:green")):
      if f"{kind}_acc" in curve[0]:
        axes[0].plot(alphas, [100 * p[f"{kind}_acc"] for p in curve], style,
                     color=color, marker="o", ms=3, label=f"{kind}, BN {mode}")
      if f"{kind}_loss" in curve[0]:
        axes[1].plot(alphas, [p[f"{kind}_loss"] for p in curve], style,
                     color=color, marker="o", ms=3, label=f"{kind}, BN {mode}")
  axes[0].set(xlabel="alpha (0 = standard, 1 = FGSM-RS)",
              ylabel="accuracy (%)", title="accuracy along the path")
  axes[1].set(xlabel="alpha", ylabel="cross-entropy",
              title="loss along the path")
  for ax in axes[:2]:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  sharp = results["sharpness"]
  layers = list(sharp["standard"]["by_layer"])
  width = 0.28
  for i, (name, color) in enumerate((("standard", "tab:blue"),
                                     ("midpoint", "tab:purple"),
                                     ("robust", "tab:red"))):
    axes[2].bar([j + (i - 1) * width for j in range(len(layers))],
                [sharp[name]["by_layer"][k] for k in layers], width,
                color=color, label=name)
  axes[2].set_xticks(range(len(layers)))
  axes[2].set_xticklabels(layers, rotation=90, fontsize=5)
  axes[2].set(ylabel="loss increase", title="layer-wise adaptive sharpness")
  axes[2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _table(results) -> str:
  """The README table: accuracies in %, both BatchNorm modes."""
  pgd = results["attack"].split()[0]
  ood = "ood_acc" in results["curves"]["recompute"][0]
  head = ["alpha"]
  for mode in ("BN interp.", "BN re-est."):
    head += [f"clean ({mode})", f"{pgd} ({mode})"] + (
        [f"OOD ({mode})"] if ood else [])
  head += ["clean loss (re-est.)", f"{pgd} loss (re-est.)"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for p, q in zip(results["curves"]["interpolate"],
                  results["curves"]["recompute"]):
    cells = [f"{p['alpha']:.1f}"]
    for point in (p, q):
      keys = ("clean_acc", "adv_acc") + (("ood_acc",) if ood else ())
      cells += [f"{100 * point[k]:.1f}" for k in keys]
    cells += [f"{q['clean_loss']:.3f}", f"{q['adv_loss']:.3f}"]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


if __name__ == "__main__":
  app.run(main)
