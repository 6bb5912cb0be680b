r"""Robust weight signatures on the embedded CIFAR-10, CPU-sized.

  nohup .venv/bin/python experiments/rws_cifar10.py --root=workdirs/rws \
      > workdirs/rws.log 2>&1 &

Stages (each skipped when its workdir already has a report.json, so a
killed run resumes; a report.json of another model is refused):

1. ``pre``: theta_pre, ``--model`` (default ``vgg16_rws``: the reference
   code's VGG-16 without BN, four max-pools and a global average pool) at
   width ``--width`` (default 0.125: channels 8..64, 0.23M parameters),
   trained from scratch on clean CIFAR-10 for ``--pre_epochs`` (the
   reference starts from ImageNet weights, which this repository does not
   have).
2. ``clean`` and one model per corruption in ``--corruptions`` (severity
   5, 100% of the training images corrupted), each fine-tuned from
   theta_pre for ``--ft_epochs`` with the reference's optimiser (SGD 0.01,
   momentum 0.9, wd 5e-4, x0.1 at 40% and 80%).
3. ``analysis``: the ``rws`` task with the first ``--k`` layers, ``--bits``
   quantization, on the first ``--n`` test points.

Writes ``experiments/results/rws_cifar10.json`` (the task's report plus the
settings) and copies the three PNGs next to it.

``--transfer``: cross-dataset transfer on two disjoint halves of the
CIFAR-10 classes (``--classes_a``, default 0-4, and ``--classes_b``, 5-9;
labels 0..4 in both), from the existing theta_pre ``--pre`` (all 10
classes; each fine-tuned model gets a fresh 5-class head):

  nohup nice -n 5 .venv/bin/python experiments/rws_cifar10.py --transfer \
      --root=workdirs/rws_transfer --pre=workdirs/rws/pre \
      > workdirs/rws_transfer.log 2>&1 &

1. ``A/clean`` and ``A/<corruption>`` on classes A, ``B/clean`` on classes
   B, each ``--ft_epochs`` from theta_pre;
2. ``analysis_A``: signatures from A applied to A's clean model (in-domain
   reference), on A's test classes;
3. ``analysis_B``: the same signatures applied to B's clean model
   (``target``), on B's test classes;
4. with ``--b_corruptions`` (optional): B's own corruption models,
   ``analysis_B_own`` (signatures extracted on B, applied to B's clean
   model) and the cosine similarities of the A and B signatures.

Writes ``experiments/results/rws_transfer_classes.json`` after each analysis.
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
_MODEL = flags.DEFINE_string(
    "model", "vgg16_rws", "Network of every model (vgg16_rws: the RWS "
    "reference's VGG-16; vgg16: five max-pools).")
_WIDTH = flags.DEFINE_float("width", 0.125, "VGG-16 width multiplier.")
_CORR = flags.DEFINE_string("corruptions",
                            "gaussian_noise+contrast+fog+pixelate",
                            "Corruptions, joined by '+'.")
_PRE = flags.DEFINE_float("pre_epochs", 6.0, "Epochs for theta_pre.")
_FT = flags.DEFINE_float("ft_epochs", 2.0, "Fine-tuning epochs per model.")
_K = flags.DEFINE_integer("k", 7, "Layers kept in each signature.")
_BITS = flags.DEFINE_integer("bits", 8, "Quantization bits (0 = float32).")
_N = flags.DEFINE_integer("n", 500, "Test points for the analysis.")
_TRANSFER = flags.DEFINE_bool("transfer", False,
                              "Run the class-halves transfer experiment.")
_PRE_DIR = flags.DEFINE_string("pre", "workdirs/rws/pre",
                               "--transfer: the shared theta_pre workdir.")
_CLASSES_A = flags.DEFINE_string("classes_a", "0-4",
                                 "--transfer: classes of dataset A.")
_CLASSES_B = flags.DEFINE_string("classes_b", "5-9",
                                 "--transfer: classes of dataset B.")
_B_CORR = flags.DEFINE_string(
    "b_corruptions", "", "--transfer: corruptions to also train on B, for "
    "signatures extracted on B itself ('' = none).")


def _done(workdir: str) -> bool:
  """Whether ``workdir`` holds a finished model of ``--model``; a finished
  model of another network is refused, as resuming would mix networks."""
  path = os.path.join(workdir, "report.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    have = (json.load(f).get("model") or {}).get("name", _MODEL.value)
  if have != _MODEL.value:
    raise SystemExit(f"{workdir} holds a {have} model but --model is "
                     f"{_MODEL.value}; pass another --root")
  return True


def _train(arg: str, workdir: str, epochs: float, **overrides) -> None:
  from robustjax import tasks
  if _done(workdir):
    print(f"skip {workdir} (report.json exists)", flush=True)
    return
  c = rws_config.get_config(
      f"{arg},model={_MODEL.value},width={_WIDTH.value}")
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


def _analyze(root: str, names: list[str], workdir: str,
             **overrides) -> dict:
  """The ``rws`` task on the models under ``root`` (``clean`` and one per
  corruption), with the experiment's k, bits and n; returns its report."""
  from robustjax import tasks
  c = rws_config.get_config(
      f"analyze,root={root},corruptions={'+'.join(names)},k={_K.value},"
      f"bits={_BITS.value},n={_N.value}")
  c.update(overrides)
  t = time.time()
  report = tasks.run(c, workdir)
  report["analysis_seconds"] = round(time.time() - t, 1)
  return report


def _transfer_rows(results: dict, names: list[str]) -> dict:
  """Per corruption: the numbers of the docs table, in percent."""
  rows = {}
  for c in names:
    b = results["transfer_B"]["per_corruption"][c]
    a = results["in_domain_A"]["per_corruption"][c]
    row = {"B_clean_on_c": b["target_acc"],
           "B_clean_plus_sig_A": b["patched_acc"],
           "B_clean_acc_after_patch": b["patched_clean_acc"],
           "A_clean_on_c": a["target_acc"],
           "A_clean_plus_sig_A": a["patched_acc"],
           "A_model_trained_on_c": a["robust_acc"],
           "A_clean_acc_after_patch": a["patched_clean_acc"]}
    own = results.get("own_B", {}).get("per_corruption", {}).get(c)
    if own is not None:
      row.update(B_clean_plus_sig_B=own["patched_acc"],
                 B_model_trained_on_c=own["robust_acc"],
                 B_clean_acc_after_own_patch=own["patched_clean_acc"])
    rows[c] = {k: round(100 * v, 2) for k, v in row.items()}
  return rows


def _cross_similarity(dir_a: str, dir_b: str, names_a: list[str],
                      names_b: list[str]) -> dict:
  """Cosine similarities between the signatures extracted on A (rows) and
  on B (columns): the paper's "same corruption, different datasets" check."""
  from robustjax import rws
  from robustjax.rws import analysis
  load = lambda d, c: rws.load(os.path.join(d, "signatures", f"{c}.rws"))
  return {"rows_A": names_a, "columns_B": names_b,
          "cosine": [[round(analysis.cosine(load(dir_a, a), load(dir_b, b)),
                            4) for b in names_b] for a in names_a]}


def transfer() -> None:
  """Signatures from classes A patched into a clean model of classes B."""
  root, pre = _ROOT.value.rstrip("/"), _PRE_DIR.value.rstrip("/")
  names = [n for n in _CORR.value.split("+") if n]
  b_names = [n for n in _B_CORR.value.split("+") if n]
  start = time.time()
  a, b = f"classes={_CLASSES_A.value}", f"classes={_CLASSES_B.value}"
  _train(f"clean,init={pre},{a}", f"{root}/A/clean", _FT.value)
  for name in names:
    _train(f"corruption={name},init={pre},{a}", f"{root}/A/{name}",
           _FT.value)
  _train(f"clean,init={pre},{b}", f"{root}/B/clean", _FT.value)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                     "rws_transfer_classes.json")
  results = {"settings": {
      "theta_pre": pre, "model": _MODEL.value, "width": _WIDTH.value,
      "ft_epochs": _FT.value,
      "k": _K.value, "bits": _BITS.value, "n": _N.value,
      "classes_a": _CLASSES_A.value, "classes_b": _CLASSES_B.value,
      "corruptions": names, "b_corruptions": b_names,
      "command": " ".join(sys.argv)}}

  def write() -> None:
    results["table"] = _transfer_rows(results, names)
    # Stages with a report.json are skipped, so this is the time of this
    # invocation only (the training times are in the log).
    results["settings"]["seconds_this_invocation"] = round(
        time.time() - start, 1)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
      json.dump(results, f, indent=1)

  # In-domain reference: A's signatures on A's clean model, A's classes.
  results["in_domain_A"] = _analyze(f"{root}/A", names,
                                    f"{root}/analysis_A", theta_pre=pre)
  # Transfer: the same signatures on B's clean model, B's classes (the
  # task reads them from the target's checkpoint).
  results["transfer_B"] = _analyze(f"{root}/A", names, f"{root}/analysis_B",
                                   theta_pre=pre, target=f"{root}/B/clean")
  write()
  for c, row in results["table"].items():
    print(f"{c}: B clean {row['B_clean_on_c']:.1f}% -> + sig_A "
          f"{row['B_clean_plus_sig_A']:.1f}% | B clean after patch "
          f"{row['B_clean_acc_after_patch']:.1f}% | in-domain A "
          f"{row['A_clean_on_c']:.1f}% -> {row['A_clean_plus_sig_A']:.1f}% "
          f"(A model trained on c {row['A_model_trained_on_c']:.1f}%)",
          flush=True)
  if b_names:
    for name in b_names:
      _train(f"corruption={name},init={pre},{b}", f"{root}/B/{name}",
             _FT.value)
    results["own_B"] = _analyze(f"{root}/B", b_names,
                                f"{root}/analysis_B_own", theta_pre=pre)
    results["similarity_A_B"] = _cross_similarity(
        f"{root}/analysis_A", f"{root}/analysis_B_own", names, b_names)
    write()
  print(f"transfer done in {time.time() - start:.0f} s: {out}", flush=True)


def main(argv) -> None:
  del argv
  from robustjax import tasks
  if _TRANSFER.value:
    transfer()
    return
  start = time.time()
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
  report["settings"] = {"model": _MODEL.value, "width": _WIDTH.value,
                        "pre_epochs": _PRE.value, "ft_epochs": _FT.value,
                        "k": _K.value, "bits": _BITS.value, "n": _N.value,
                        "corruptions": names,
                        "analysis_seconds": round(time.time() - t, 1),
                        # Stages with a report.json are skipped, so this
                        # is the time of this invocation only.
                        "seconds_this_invocation": round(
                            time.time() - start, 1),
                        "command": " ".join(sys.argv),
                        "date": time.strftime("%Y-%m-%d")}
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
