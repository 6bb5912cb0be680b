"""PGD-10 AT step on one GPU: robustjax (bfloat16) vs PyTorch AMP, with MFU.

One command, a few minutes on one GPU:

  .venv/bin/python benchmarks/gpu.py            # ResNet-18 and WRN-34-10, batch 512

For each model (robustjax's CIFAR ResNet-18 at width 1 and WRN-34-10), one
Madry PGD-AT step on random 32x32x3 uint8 images: Linf PGD-10 (eps 8/255,
step 2/255, uniform random start, CE, BatchNorm in eval mode), then CE on
the adversarial batch in train mode and SGD (momentum 0.9, weight decay
5e-4). JAX runs the library's own step (training.step.make_train_step with
the 'pgd_at' objective) with the model's compute dtype bfloat16 (parameters,
optimizer state and logits stay float32). PyTorch runs the twin network
(benchmarks/torch_reference.py) eagerly under torch.autocast(bfloat16) in
channels_last, if a CUDA build of torch is importable; otherwise that column
says why it was skipped.

Reported per model: images/s (median of --reps steps after --warmup), the
XLA cost-analysis FLOPs of one step, MFU = FLOPs / step time / the chip's
dense bfloat16 peak (looked up from the device name, or --peak-tflops),
PyTorch's images/s and MFU for the same FLOP count, the ratio, compile time
and peak device memory. Writes benchmarks/results/gpu.json.

Without a GPU it stops with one line on stderr and exit code 2.
--cpu-dry-run runs the whole script on the CPU at toy sizes (narrow models,
batch 4, PGD-2) to prove the code path end to end; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from results_io import utc_now, write_json  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

EPS, STEP = 8 / 255, 2 / 255

# Dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, from the vendors'
# data sheets. Matched in order against the JAX device kind, so the more
# specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),     # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

# name -> (robustjax model name, width) at full size and in a dry run.
MODELS = {"resnet18": ("resnet18", 1.0, 0.125),
          "wrn34_10": ("wrn34_10", 1.0, 0.05)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--models", default="resnet18,wrn34_10",
                 help="comma list of: " + ", ".join(MODELS))
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--steps", type=int, default=10, help="PGD steps (10)")
  p.add_argument("--reps", type=int, default=10,
                 help="timed steps per side and model (default 10)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="the chip's dense bf16 peak in TFLOP/s (default: "
                      "looked up from the device name)")
  p.add_argument("--no-torch", dest="torch", action="store_false",
                 help="skip the PyTorch AMP side")
  p.add_argument("--cache-dir", default="/tmp/robustjax_jax_cache",
                 help="JAX persistent compilation cache ('' disables): a "
                      "rerun skips XLA compilation")
  p.add_argument("--cpu-dry-run", action="store_true",
                 help="run on the CPU at toy sizes to test the script")
  p.add_argument("--out", default=None,
                 help="JSON path (default benchmarks/results/gpu.json; "
                      "/tmp/gpu_dry_run.json for a dry run)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  bad = set(args.models) - set(MODELS)
  if bad or not args.models:
    p.error(f"unknown models {sorted(bad)}; choose from {', '.join(MODELS)}")
  if args.cpu_dry_run:
    args.batch, args.steps = min(args.batch, 4), min(args.steps, 2)
    args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)
  if args.out is None:
    args.out = ("/tmp/gpu_dry_run.json" if args.cpu_dry_run
                else str(HERE / "results" / "gpu.json"))
  return args


def fail(message: str) -> None:
  """One line on stderr, exit code 2."""
  print(f"gpu.py: {message}", file=sys.stderr)
  raise SystemExit(2)


def find_gpu():
  """The first JAX GPU, or exit 2 with one line."""
  import jax
  try:
    gpus = jax.devices("gpu")
  except RuntimeError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    fail("no GPU: JAX found no 'gpu' backend (" + first + "); install "
         "requirements-gpu.txt on a CUDA machine (benchmarks/README.md), or "
         "pass --cpu-dry-run to test the script on the CPU")
  if not gpus:
    fail("no GPU: jax.devices('gpu') is empty")
  return gpus[0]


def peak_flops(device_kind: str, override: float | None) -> float | None:
  """The chip's dense bf16 FLOP/s, or None when unknown and not given."""
  if override is not None:
    return override * 1e12
  for name, tflops in BF16_PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops * 1e12
  return None


def median_seconds(fn, reps: int, warmup: int, sync) -> list[float]:
  """Wall seconds of ``reps`` calls of ``fn`` after ``warmup`` calls;
  ``sync()`` waits for the device before each clock read."""
  for _ in range(warmup):
    fn()
  sync()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - t0)
  return times


def optimizer():
  """SGD as benchmarks/run.py: lr 0.1, momentum 0.9, wd 5e-4 on all."""
  import ml_collections
  from robustjax.training import optimizer as opt_lib
  cfg = ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
      weight_decay_on="all", schedule="constant", boundaries=(), decay=0.1,
      warmup_steps=0, peak_fraction=0.4))
  return opt_lib.make_optimizer(cfg, total_steps=100_000)


def bench_jax(name: str, width: float, args, device) -> dict:
  """robustjax's PGD-AT step in bfloat16 on ``device``."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from robustjax import models, sharding
  from robustjax.training import objectives
  from robustjax.training import step as train_step
  model = models.create_model(name, num_classes=10, width=width,
                              dtype=jnp.bfloat16)
  objective = objectives.make_objective(objectives.reference_params(
      "pgd_at", eps=EPS, step_size=STEP, steps=args.steps), model)
  tx, schedule = optimizer()
  mesh = sharding.make_mesh(1)
  state = sharding.put_replicated(
      train_step.init_state(model, tx, jax.random.key(args.seed), (32, 32, 3)),
      mesh)
  rng = np.random.default_rng(args.seed)
  batch = sharding.put_global_batch(
      {"image": rng.integers(0, 256, (args.batch, 32, 32, 3), np.uint8),
       "label": rng.integers(0, 10, (args.batch,)).astype(np.int32)}, mesh)
  key = sharding.put_replicated(jax.random.key(args.seed + 1), mesh)
  step = train_step.make_train_step(objective, tx, schedule, mesh,
                                    augment=False)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, key)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))
  if flops <= 0:  # a backend without conv costs: the HLO-level count
    flops = float(lowered.cost_analysis().get("flops", 0.0))
  holder = {"state": state, "metrics": None}

  def call():
    holder["state"], holder["metrics"] = compiled(holder["state"], batch, key)

  times = median_seconds(call, args.reps, args.warmup,
                         lambda: jax.block_until_ready(holder["state"]))
  stats = getattr(device, "memory_stats", lambda: None)() or {}
  params = sum(int(x.size) for x in jax.tree.leaves(holder["state"].params))
  return {"params": params, "compile_s": compile_s, "flops_per_step": flops,
          "times_s": times, "median_s": statistics.median(times),
          "peak_memory_bytes": stats.get("peak_bytes_in_use"),
          "last_loss": float(holder["metrics"]["loss"])}


def bench_torch(name: str, width: float, args) -> dict:
  """The same step in PyTorch AMP (bf16 autocast, channels_last)."""
  try:
    import torch
  except ImportError as e:
    return {"skipped": f"torch is not importable ({e})"}
  device = "cpu" if args.cpu_dry_run else "cuda"
  if device == "cuda" and not torch.cuda.is_available():
    return {"skipped": f"torch {torch.__version__} has no CUDA device "
                       "(a CPU build?); see requirements-gpu.txt"}
  sys.path.insert(0, str(HERE))
  import torch_reference as tr
  torch.manual_seed(args.seed)
  torch.backends.cudnn.benchmark = True
  net = (tr.ResNet(width=width) if name == "resnet18"
         else tr.WideResNet(34, 10, width=width))
  net = net.to(device, memory_format=torch.channels_last)
  step = tr.AMPPGDATStep(net, eps=EPS, step_size=STEP, steps=args.steps,
                         device_type=device)
  gen = torch.Generator().manual_seed(args.seed)
  images = torch.randint(0, 256, (args.batch, 32, 32, 3), dtype=torch.uint8,
                         generator=gen).to(device)
  labels = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  out = {}
  times = median_seconds(lambda: out.update(step(images, labels)), args.reps,
                         args.warmup, sync)
  return {"params": sum(p.numel() for p in net.parameters()),
          "times_s": times, "median_s": statistics.median(times),
          "peak_memory_bytes": (torch.cuda.max_memory_allocated()
                                if device == "cuda" else None),
          "last_loss": float(out["loss"]), "version": torch.__version__}


def format_table(rows: list[dict]) -> str:
  lines = ["| model | batch | JAX img/s | JAX MFU | PyTorch AMP img/s | "
           "PyTorch MFU | JAX/PyTorch | TFLOP/step | JAX compile (s) | "
           "JAX / PyTorch peak GiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
  gib = lambda b: "n/a" if b is None else f"{b / 2 ** 30:.1f}"  # noqa: E731
  for r in rows:
    j, t = r["jax"], r["torch"]
    skipped = "skipped" in t
    lines.append(
        f"| {r['model']} | {r['batch']} | {r['jax_images_per_s']:.0f} | "
        f"{pct(r['jax_mfu'])} | "
        + ("skipped | n/a | n/a" if skipped else
           f"{r['torch_images_per_s']:.0f} | {pct(r['torch_mfu'])} | "
           f"{r['ratio_jax_over_torch']:.2f}")
        + f" | {j['flops_per_step'] / 1e12:.2f} | {j['compile_s']:.0f} | "
        f"{gib(j['peak_memory_bytes'])} / "
        f"{'n/a' if skipped else gib(t['peak_memory_bytes'])} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.cpu_dry_run:
    os.environ["JAX_PLATFORMS"] = "cpu"
  # JAX would otherwise reserve 75% of the GPU at start-up, leaving PyTorch
  # (same process, same GPU) a quarter, and its peak-memory figure would be
  # the reservation, not the step's use.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  sys.path.insert(0, str(ROOT))
  import jax
  if args.cache_dir:
    # A rerun (or the second model of a tuned rerun) skips XLA compilation.
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  device = jax.devices("cpu")[0] if args.cpu_dry_run else find_gpu()
  kind = device.device_kind
  peak = peak_flops(kind, args.peak_tflops)
  if args.cpu_dry_run and peak is None:
    peak = 1e12  # a placeholder so the MFU code path runs; meaningless
  print(f"device: {kind} ({device.platform}); bf16 peak "
        f"{'unknown (pass --peak-tflops)' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}"
        f"; jax {jax.__version__}; batch {args.batch}, PGD-{args.steps}"
        + ("; CPU DRY RUN: toy sizes, numbers mean nothing"
           if args.cpu_dry_run else ""), flush=True)
  rows = []
  for name in args.models:
    model_name, width, dry_width = MODELS[name]
    width = dry_width if args.cpu_dry_run else width
    j = bench_jax(model_name, width, args, device)
    print(f"[{name}] JAX: {args.batch / j['median_s']:.0f} img/s, compile "
          f"{j['compile_s']:.0f} s", flush=True)
    t = bench_torch(name, width, args) if args.torch else {
        "skipped": "--no-torch"}
    if "skipped" in t:
      print(f"[{name}] PyTorch skipped: {t['skipped']}", flush=True)
    elif t["params"] != j["params"]:
      fail(f"{name}: the PyTorch twin has {t['params']} parameters, "
           f"robustjax's model {j['params']}; they are not the same network")
    row = {"model": name, "width": width, "batch": args.batch, "jax": j,
           "torch": t, "jax_images_per_s": args.batch / j["median_s"],
           "jax_mfu": (j["flops_per_step"] / j["median_s"] / peak
                       if peak else None)}
    if "skipped" not in t:
      row["torch_images_per_s"] = args.batch / t["median_s"]
      # The same work: the JAX step's FLOP count.
      row["torch_mfu"] = (j["flops_per_step"] / t["median_s"] / peak
                          if peak else None)
      row["ratio_jax_over_torch"] = statistics.median(
          [tt / jj for tt, jj in zip(t["times_s"], j["times_s"])])
    rows.append(row)
  table = format_table(rows)
  print()
  print(table)
  report = {
      "date": utc_now(),
      "command": " ".join([Path(sys.executable).name] + sys.argv),
      "cpu_dry_run": args.cpu_dry_run, "device_kind": kind,
      "platform": platform.platform(), "jax": jax.__version__,
      "peak_bf16_flops_per_s": peak,
      "config": {"batch": args.batch, "pgd_steps": args.steps, "eps": EPS,
                 "step_size": STEP, "reps": args.reps, "warmup": args.warmup,
                 "dtype": "bfloat16 compute, float32 parameters",
                 "torch": "eager, torch.autocast(bfloat16), channels_last, "
                          "cudnn.benchmark"},
      "results": rows, "table_markdown": table}
  write_json(args.out, report)


if __name__ == "__main__":
  main()
