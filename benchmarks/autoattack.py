"""AutoAttack 'standard': robustjax against torchattacks, same model and points.

  .venv/bin/python benchmarks/autoattack.py --checkpoint=workdirs/quickstart
  .venv/bin/python benchmarks/autoattack.py            # tiny CNN, trained here

Both libraries attack the same weights (copied into a PyTorch twin whose
logits match to 1e-4) on the first ``--n`` test points, with the original
AutoAttack settings: APGD-CE and APGD-T (100 iterations, 9 targets), FAB-T
(100 iterations, 9 targets), Square (5000 queries, p_init 0.8, no rescaled
schedule; torchattacks' own ``AutoAttack`` class defaults to 10 iterations
and a rescaled Square schedule, so the attacks are built one by one as the
reference runs them). The run prints per-attack robust accuracy and seconds
for both, the wall-time ratio, and writes ``benchmarks/results/
autoattack.json``.

robustjax is timed twice: ``cold`` includes XLA compilation (what a first
run costs) and ``warm`` reuses the compiled attacks (what every further
checkpoint of the same model costs). torchattacks has no compilation. The
libraries run one after the other in this process, in alternating order
across ``--reps``; wall times are medians.

``--checkpoint`` takes a robustjax workdir of a ResNet-18 (any width; the
PyTorch twin is benchmarks/torch_reference.py). Without it a tiny two-conv
CNN is trained for 600 steps (tests/tiny_models.py) and attacked at
``--eps=2`` (2/255), where it keeps about 19% robust accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from run import limit_threads, machine_info, median  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default="",
                 help="robustjax ResNet-18 workdir (default: a tiny CNN "
                 "trained here)")
  p.add_argument("--n", type=int, default=100, help="first N test points")
  p.add_argument("--eps", type=float, default=None,
                 help="Linf eps in 1/255 units (default 8; 2 for the tiny "
                 "CNN)")
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--reps", type=int, default=1)
  p.add_argument("--threads", type=int, default=None)
  p.add_argument("--jax-devices", type=int, default=None,
                 help="CPU devices the JAX batch is split over (= threads)")
  p.add_argument("--ynnpack-convolutions", action="store_true",
                 help="XLA:CPU's default convolution kernels (YNNPACK) "
                      "instead of the ones launch.py runs with")
  p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                      "autoattack.json"))
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  threads, affinity = limit_threads(args.threads)
  devices = args.jax_devices or threads
  import jax
  if not args.ynnpack_convolutions:  # what launch.py runs with
    from robustjax import xla_cpu
    xla_cpu.use_xla_convolutions()
  jax.config.update("jax_num_cpu_devices", devices)
  import numpy as np
  import torch
  torch.set_num_threads(threads)

  from robustjax import checkpoint, data, sharding
  from robustjax.attacks import autoattack as aa
  from robustjax.models import build_model
  import tiny_models  # tests/: the tiny CNN, its twin, torchattacks' attacks

  test = data.load_split("cifar10", "test")
  x = test.images[:args.n].astype(np.float32) / 255
  y = test.labels[:args.n]
  if args.checkpoint:
    import torch_reference
    restored = checkpoint.load(args.checkpoint)
    spec = restored["meta"]["model"]
    if spec["name"] != "resnet18":
      raise SystemExit(f"the PyTorch twin covers resnet18 only, the "
                       f"checkpoint holds {spec['name']}")
    model = build_model(spec)
    variables = {"params": restored["params"],
                 "batch_stats": restored["batch_stats"]}
    twin = torch_reference.ResNet(num_classes=spec["num_classes"],
                                  width=spec["width"])
    torch_reference.load_flax_variables(twin, variables)
    twin.eval()
    workload = f"{spec['name']} width {spec['width']} ({args.checkpoint})"
    eps = (args.eps if args.eps is not None else 8.0) / 255
  else:
    model, variables = tiny_models.trained_tiny_cnn()
    twin = tiny_models.torch_twin(variables)
    workload = "tiny CNN (tests/tiny_models.py), 600 Adam steps"
    eps = (args.eps if args.eps is not None else 2.0) / 255

  def apply_fn(v, z, k):
    return model.apply(v, z, train=False)

  with torch.no_grad():
    gap = float(np.abs(np.asarray(apply_fn(variables, x[:50], None))
                       - twin(torch.from_numpy(np.ascontiguousarray(
                           x[:50].transpose(0, 3, 1, 2)))).numpy()).max())
  mesh = sharding.make_mesh(devices)
  cfg = aa.config_for("standard", eps=eps)

  def run_jax():
    rows = []
    t0 = time.perf_counter()
    result = aa.run_autoattack(apply_fn, variables, x, y, cfg, mesh=mesh,
                               batch_size=args.batch, on_attack=rows.append)
    return time.perf_counter() - t0, result.robust_acc, rows

  def run_torch():
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y).long()
    attacks = tiny_models.torchattacks_standard(twin, eps)
    t0 = time.perf_counter()
    with torch.no_grad():
      robust = (twin(xt).argmax(1) == yt).numpy()
    rows = []
    for name, attack in attacks:
      t1 = time.perf_counter()
      idx = np.flatnonzero(robust)
      for lo in range(0, idx.size, args.batch):
        part = idx[lo:lo + args.batch]
        adv = attack(xt[part], yt[part])
        with torch.no_grad():
          robust[part[(twin(adv).argmax(1) != yt[part]).numpy()]] = False
      rows.append({"attack": name, "robust_acc": float(robust.mean()),
                   "seconds": round(time.perf_counter() - t1, 1)})
    return time.perf_counter() - t0, float(robust.mean()), rows

  runs = {"robustjax_cold": [], "robustjax_warm": [], "torchattacks": []}
  details = {}
  for r in range(args.reps):
    order = ["jax", "torch"] if r % 2 == 0 else ["torch", "jax"]
    for side in order:
      if side == "jax":
        name = "robustjax_cold" if r == 0 else "robustjax_warm"
        out = run_jax()
        runs[name].append(out[0])
        details[name] = out
        if r == 0:  # one warm run right after the cold one
          out = run_jax()
          runs["robustjax_warm"].append(out[0])
          details["robustjax_warm"] = out
      else:
        out = run_torch()
        runs["torchattacks"].append(out[0])
        details["torchattacks"] = out
      print(f"rep {r} {side}: {out[0]:.1f} s, robust {100 * out[1]:.2f}%",
            flush=True)

  med = {k: median(v) for k, v in runs.items() if v}
  print(f"\nAutoAttack standard, Linf {eps * 255:.1f}/255, {args.n} points, "
        f"{workload}; logits gap {gap:.1e}")
  print(f"{'attack':10s} {'robustjax %':>12s} {'s':>7s} {'torchattacks %':>15s}"
        f" {'s':>7s}")
  for ours, theirs in zip(details["robustjax_warm"][2],
                          details["torchattacks"][2]):
    print(f"{ours['attack']:10s} {100 * ours['robust_acc']:12.2f} "
          f"{ours['seconds']:7.1f} {100 * theirs['robust_acc']:15.2f} "
          f"{theirs['seconds']:7.1f}")
  ratio_cold = med["torchattacks"] / med["robustjax_cold"]
  ratio_warm = med["torchattacks"] / med["robustjax_warm"]
  print(f"wall: torchattacks {med['torchattacks']:.1f} s | robustjax cold "
        f"{med['robustjax_cold']:.1f} s ({ratio_cold:.2f}x) | warm "
        f"{med['robustjax_warm']:.1f} s ({ratio_warm:.2f}x)")
  record = {
      "workload": workload, "eps": eps, "n": args.n, "batch": args.batch,
      "jax_devices": devices, "logits_max_abs_gap": gap,
      "seconds": runs, "median_seconds": med,
      "speedup_vs_torchattacks": {"cold": ratio_cold, "warm": ratio_warm},
      "per_attack": {k: v[2] for k, v in details.items()},
      "robust_acc": {k: v[1] for k, v in details.items()},
      "machine": machine_info(threads, affinity),
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(record, f, indent=2)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
