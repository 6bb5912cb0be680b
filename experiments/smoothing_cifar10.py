r"""Output-space mixing beside weight-space mixing, on one standard/robust pair.

  .venv/bin/python experiments/smoothing_cifar10.py \
      --standard=workdirs/interp/standard --robust=workdirs/exp_fast_at

The pair of ``experiments/interpolation_cifar10.py``: two ResNet-18s of
width 0.25 trained on the embedded CIFAR-10 from the same initialisation
(seed 0), a standard one and the fast-AT (FGSM-RS) one. The defaults are
already scaled down for a CPU (200 points, 20-step attacks, a mixer of
width 1/16 trained for 30 batches of 32); docs/results.md gives the
command and the scale of the measured run. On the same first
``--n`` test points, with the same attacks, it measures clean and robust
accuracy of

(a) weight interpolation ``(1 - alpha) standard + alpha robust`` over
    ``--alphas`` (BatchNorm statistics re-estimated on 20 training batches
    of 128 at every alpha);
(b) the fixed-weight output mixture ``log((1 - a) softmax(s_std g) + a
    softmax(s_rob h))`` over ``--mix_alphas``, with the temperatures
    ``--std_scale`` / ``--rob_scale``;
(c) the adaptive mixture: a mixing network (width ``--mixer_width``)
    trained here with the reference's recipe, scaled by the flags below,
    evaluated with the reference's CIFAR-10 and CIFAR-100 evaluation
    constants (``a`` in [0.96, 1.00] and [0.84, 0.99]).

The attack on every model is the same cheap AutoAttack (APGD-CE and
APGD-T, ``--aa_steps`` steps, ``--aa_targets`` targets, L-inf 8/255) run
end to end on the composite; the mixtures are also attacked by PGD-20 aimed
at either base model alone (transfer), and their robust accuracy is the
worst case over all attacks. Writes
``experiments/results/smoothing_cifar10.{json,png}`` and prints a table.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_STANDARD = flags.DEFINE_string("standard", "workdirs/interp/standard",
                                "Workdir of the standard model.")
_ROBUST = flags.DEFINE_string("robust", "workdirs/exp_fast_at",
                              "Workdir of the robust model.")
_N = flags.DEFINE_integer("n", 200, "Test points (the first N).")
_ALPHAS = flags.DEFINE_list("alphas", ["0", "0.2", "0.4", "0.6", "0.7", "0.8",
                                       "0.9", "1"],
                            "Weight-interpolation grid.")
_MIX = flags.DEFINE_list("mix_alphas", ["0", "0.5", "0.7", "0.8", "0.9",
                                        "0.95", "1"],
                         "Output-mixing grid of a.")
_STD_SCALE = flags.DEFINE_float("std_scale", 1.2, "Standard temperature.")
_ROB_SCALE = flags.DEFINE_float("rob_scale", 0.3, "Robust temperature.")
_AA_STEPS = flags.DEFINE_integer("aa_steps", 20, "APGD steps.")
_AA_TARGETS = flags.DEFINE_integer("aa_targets", 3, "APGD-T targets.")
_MIXER_WIDTH = flags.DEFINE_float("mixer_width", 1 / 16,
                                  "Mixing network width (1 = reference).")
_MIXER_BATCHES = flags.DEFINE_integer("mixer_batches", 30,
                                      "Clean batches of mixer training.")
_MIXER_BATCH = flags.DEFINE_integer("mixer_batch", 32, "Mixer batch size.")
_MIXER_TARGETS = flags.DEFINE_integer("mixer_targets", 2,
                                      "Targeted runs per training batch.")
_MIXER_DF = flags.DEFINE_float("mixer_steps_df", 10.0,
                               "chi2 degrees of freedom of the attack "
                               "iterations.")
_MIXER_LR = flags.DEFINE_float("mixer_lr", 1e-3, "Mixer learning rate.")
_OUT = flags.DEFINE_string("out", "experiments/results/smoothing_cifar10",
                           "Output path without extension.")


def main(argv):
  del argv
  import jax
  import numpy as np
  from configs import common
  from robustjax import attacks, checkpoint, data, sharding
  from robustjax.errors import ConfigError
  from robustjax.models import build_model
  from robustjax.smoothing import (AdaptiveClassifier, GammaConstants,
                                   MixedClassifier, mixture_variables,
                                   training)
  from robustjax.smoothing import evaluate as smoothing_eval
  from robustjax.weightspace import batchnorm, interpolate
  start = time.time()
  std, rob = checkpoint.load(_STANDARD.value), checkpoint.load(_ROBUST.value)
  spec = std["meta"]["model"]
  if spec != rob["meta"]["model"]:
    raise ConfigError(f"models differ: {spec} vs {rob['meta']['model']}")
  model = build_model(spec)
  mesh = sharding.make_mesh(1)
  test = data.load_split("cifar10", "test")
  train = data.load_split("cifar10", "train")
  n = _N.value
  vs = {"params": std["params"], "batch_stats": std["batch_stats"]}
  vr = {"params": rob["params"], "batch_stats": rob["batch_stats"]}
  aa = attacks.config_for("custom", attacks=("apgd-ce", "apgd-t"),
                          apgd_steps=_AA_STEPS.value,
                          n_target_classes=_AA_TARGETS.value)
  pgd = attacks.build(common.pgd_attack(20, step_size=0.0027))
  results = {"model": spec, "n_test": n, "standard_step": std["step"],
             "robust_step": rob["step"],
             "autoattack": f"APGD-CE + APGD-T ({_AA_STEPS.value} steps, "
                           f"{_AA_TARGETS.value} targets), Linf 8/255",
             "transfer": "PGD-20 (step 0.0027) aimed at one base model",
             "std_scale": _STD_SCALE.value, "rob_scale": _ROB_SCALE.value}

  # (a) weight interpolation, BatchNorm re-estimated at every alpha.
  batches = data.TrainBatches(train, 128, 0, mesh)
  to_float = jax.jit(data.to_float)
  bn = [to_float(batches.batch(i)["image"]) for i in range(20)]
  keyed = lambda v, x, k: model.apply(v, x, train=False)  # noqa: E731
  results["weight"] = []
  for alpha in (float(a) for a in _ALPHAS.value):
    v = interpolate.interpolate_variables(
        vs, vr, alpha, batch_stats="recompute",
        stats_fn=batchnorm.flax_stats_fn(model.apply), batches=iter(bn))
    r = attacks.run_autoattack(keyed, v, test.images[:n], test.labels[:n],
                               aa, mesh=mesh, batch_size=n)
    point = {"alpha": alpha, "clean_acc": r.clean_acc,
             "robust_acc": r.robust_acc}
    results["weight"].append(point)
    print(f"weight alpha {alpha:.2f}: clean {100 * r.clean_acc:.1f}% | "
          f"autoattack {100 * r.robust_acc:.1f}%", flush=True)

  # (b) fixed-weight output mixing.
  mixed = MixedClassifier(model, model, _STD_SCALE.value, _ROB_SCALE.value)
  sources = smoothing_eval.transfer_sources(model, model)
  transfer = {"pgd20_std": (sources["std"], pgd),
              "pgd20_rob": (sources["rob"], pgd)}
  eval_fixed = smoothing_eval.make_evaluator(
      mixed, test, mesh, autoattack_config=aa, transfer=transfer,
      batch_size=n, num_examples=n, rob_scale=_ROB_SCALE.value)
  results["fixed"] = []
  for a in (float(a) for a in _MIX.value):
    point = {"alpha": a, **eval_fixed(mixture_variables(vs, vr, a))}
    results["fixed"].append(point)
    print(f"mix a {a:.2f}: clean {100 * point['clean_acc']:.1f}% | "
          f"autoattack {100 * point['autoattack_acc']:.1f}% | worst "
          f"{100 * point['robust_acc']:.1f}% | certified "
          f"{100 * point['certified_frac']:.1f}%", flush=True)

  # (c) the adaptive mixture, trained here.
  t0 = time.time()
  clf = AdaptiveClassifier(model, model, width=_MIXER_WIDTH.value,
                           std_scale=_STD_SCALE.value,
                           rob_scale=_ROB_SCALE.value)
  recipe = training.AttackRecipe(steps_df=_MIXER_DF.value,
                                 n_targets=_MIXER_TARGETS.value)
  trained = training.train_mixer(
      clf, {"std": vs, "rob": vr},
      clf.init_mixer(jax.random.key(0), vs, vr, (32, 32, 3)),
      data.subset(train, ""), batch_size=_MIXER_BATCH.value,
      num_batches=_MIXER_BATCHES.value, recipe=recipe,
      loss=training.LossWeights(1.5, 0.0, 0.3, 1.0, 1.0), lr=_MIXER_LR.value,
      accum=4, seed=0, log=lambda s: print(s, flush=True), log_every=5)
  results["mixer_training"] = {
      "width": _MIXER_WIDTH.value, "batches": _MIXER_BATCHES.value,
      "batch_size": _MIXER_BATCH.value, "n_targets": _MIXER_TARGETS.value,
      "steps_df": _MIXER_DF.value, "lr": _MIXER_LR.value,
      "loss": [1.5, 0.0, 0.3], "minutes": round((time.time() - t0) / 60, 1),
      "history": trained.history}
  results["adaptive"] = []
  for label, consts in (
      ("cifar10 constants", GammaConstants(2.0, 1.05, 0.04, 0.96, True)),
      ("cifar100 constants", GammaConstants(2.0, 1.3, 0.15, 0.84, True))):
    c = AdaptiveClassifier(model, model, width=_MIXER_WIDTH.value,
                           std_scale=_STD_SCALE.value,
                           rob_scale=_ROB_SCALE.value, eval_constants=consts)
    ev = smoothing_eval.make_evaluator(
        c, test, mesh, autoattack_config=aa, transfer=transfer,
        batch_size=n, num_examples=n, rob_scale=_ROB_SCALE.value,
        certify_alpha=consts.alpha_range[0])
    point = {"label": label, "alpha_range": list(consts.alpha_range),
             **ev({"std": vs, "rob": vr, "mixer": trained.mixer})}
    results["adaptive"].append(point)
    print(f"adaptive ({label}): clean {100 * point['clean_acc']:.1f}% | "
          f"autoattack {100 * point['autoattack_acc']:.1f}% | worst "
          f"{100 * point['robust_acc']:.1f}% | a mean "
          f"{point['alpha_mean']:.3f}", flush=True)
  results["wall_time_min"] = round((time.time() - start) / 60, 1)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(results, f, indent=1, default=float)
  _figure(results, _OUT.value + ".png")
  print(_table(results))
  del np


def _figure(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 5))
  for key, style, color, label in (
      ("weight", "o-", "tab:blue", "weight interpolation (alpha)"),
      ("fixed", "s-", "tab:red", "output mixing, fixed a (worst case)")):
    curve = results[key]
    ax.plot([100 * p["clean_acc"] for p in curve],
            [100 * p["robust_acc"] for p in curve], style, color=color,
            label=label)
    for p in curve:
      ax.annotate(f"{p['alpha']:g}", (100 * p["clean_acc"],
                                      100 * p["robust_acc"]), fontsize=6)
  for p, m in zip(results["adaptive"], ("*", "P")):
    ax.plot([100 * p["clean_acc"]], [100 * p["robust_acc"]], m, ms=11,
            color="tab:green", label=f"adaptive, {p['label']}")
  ax.set(xlabel="clean accuracy (%)", ylabel="robust accuracy (%)",
         title=f"same {results['n_test']} test points, same attacks")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _table(results):
  def row(method, weight, p, aa_key, certified):
    return (f"| {method} | {weight} | {100 * p['clean_acc']:.1f} | "
            f"{100 * p[aa_key]:.1f} | {100 * p['robust_acc']:.1f} | "
            f"{certified} |")
  rows = ["| method | weight | clean | AutoAttack | worst case | certified |",
          "|---|---:|---:|---:|---:|---:|"]
  rows += [row("weight interpolation", f"alpha {p['alpha']:g}", p,
               "robust_acc", "-") for p in results["weight"]]
  rows += [row("output mixing", f"a {p['alpha']:g}", p, "autoattack_acc",
               f"{100 * p['certified_frac']:.1f}") for p in results["fixed"]]
  rows += [row(f"adaptive ({p['label']})", f"a mean {p['alpha_mean']:.3f}",
               p, "autoattack_acc", f"{100 * p['certified_frac']:.1f}")
           for p in results["adaptive"]]
  return "\n".join(rows)


if __name__ == "__main__":
  app.run(main)
