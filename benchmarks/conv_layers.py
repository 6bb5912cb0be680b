"""Training convolutions alone: XLA:CPU against PyTorch's oneDNN.

For each stage shape of a width-0.25 CIFAR ResNet-18 (16 channels at 32x32,
32 at 16x16, 64 at 8x8, 128 at 4x4; batch 128), four 3x3 conv + ReLU layers
and the gradient of their summed output with respect to the four kernels
(forward, data-gradient and weight-gradient convolutions), as one call:

  XLA NHWC / NCHW   jax.grad of lax.conv_general_dilated, jitted
  PyTorch CL / NCHW torch.autograd.grad of F.conv2d, channels_last or not

Interleaved repetitions, medians. This isolates the kernels that decide the
standard training step's ratio in ``run.py`` (see benchmarks/README.md).

XLA runs the convolutions with its own kernels, as launch.py does (see
robustjax/xla_cpu.py); ``--ynnpack-convolutions`` measures XLA's default,
YNNPACK, instead.

Usage:
  .venv/bin/python benchmarks/conv_layers.py [--reps=7 --threads=2]
  .venv/bin/python benchmarks/conv_layers.py --ynnpack-convolutions \
      --out=benchmarks/results/conv_layers_ynnpack.json
Writes benchmarks/results/conv_layers.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from results_io import utc_now, write_json  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ((16, 32), (32, 16), (64, 8), (128, 4))  # (channels, map size)
LAYERS = 4


def _jax_fn(channels: int, size: int, batch: int, layout: str):
  import jax
  import jax.numpy as jnp
  from jax import lax
  dims = ("NHWC", "HWIO", "NHWC") if layout == "nhwc" else (
      "NCHW", "OIHW", "NCHW")
  shape = ((batch, size, size, channels) if layout == "nhwc"
           else (batch, channels, size, size))
  kshape = ((3, 3, channels, channels) if layout == "nhwc"
            else (channels, channels, 3, 3))
  key = jax.random.key(0)
  x = jax.random.uniform(key, shape)
  kernels = [0.1 * jax.random.normal(jax.random.fold_in(key, i), kshape)
             for i in range(LAYERS)]

  def out(kernels):
    h = x
    for k in kernels:
      h = jax.nn.relu(lax.conv_general_dilated(
          h, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims))
    return jnp.sum(h)
  grad = jax.jit(jax.grad(out))
  return lambda: jax.block_until_ready(grad(kernels))


def _torch_fn(channels: int, size: int, batch: int, channels_last: bool):
  import torch
  import torch.nn.functional as F
  gen = torch.Generator().manual_seed(0)
  x = torch.rand(batch, channels, size, size, generator=gen)
  kernels = [(0.1 * torch.randn(channels, channels, 3, 3, generator=gen))
             for _ in range(LAYERS)]
  if channels_last:
    x = x.to(memory_format=torch.channels_last)
    kernels = [k.to(memory_format=torch.channels_last) for k in kernels]
  kernels = [k.requires_grad_() for k in kernels]

  def call():
    h = x
    for k in kernels:
      h = F.relu(F.conv2d(h, k, padding=1))
    return torch.autograd.grad(h.sum(), kernels)
  return call


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--ynnpack-convolutions", action="store_true",
                 help="XLA:CPU's default kernels (YNNPACK) instead of "
                      "robustjax's choice")
  p.add_argument("--out", default=str(ROOT / "benchmarks/results/"
                                      "conv_layers.json"))
  args = p.parse_args()
  if not args.ynnpack_convolutions:
    import sys
    sys.path.insert(0, str(ROOT))
    from robustjax import xla_cpu
    xla_cpu.use_xla_convolutions()
  # XLA:CPU sizes its thread pool from the affinity mask (see run.py).
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch
  torch.set_num_threads(args.threads)
  rows = []
  for channels, size in SHAPES:
    fns = {"xla_nhwc": _jax_fn(channels, size, args.batch, "nhwc"),
           "xla_nchw": _jax_fn(channels, size, args.batch, "nchw"),
           "torch_channels_last": _torch_fn(channels, size, args.batch, True),
           "torch_nchw": _torch_fn(channels, size, args.batch, False)}
    for fn in fns.values():  # compile / warm up
      fn()
      fn()
    times = {name: [] for name in fns}
    for _ in range(args.reps):
      for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    rows.append({"channels": channels, "size": size, "median_ms": ms,
                 "times_s": times})
    print(f"{channels:4d} ch {size:2d}x{size:<2d}: " + ", ".join(
        f"{name} {v:.1f} ms" for name, v in ms.items())
        + f"  (XLA NHWC / best PyTorch: "
        f"{ms['xla_nhwc'] / min(ms['torch_channels_last'], ms['torch_nchw']):.2f}x"
        " the time)")
  out = {"date": utc_now(), "load_average": os.getloadavg(),
         "batch": args.batch, "layers": LAYERS, "threads": args.threads,
         "xla_convolutions": ("ynnpack" if args.ynnpack_convolutions
                              else "xla"),
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
         "reps": args.reps, "rows": rows}
  write_json(args.out, out)


if __name__ == "__main__":
  main()
