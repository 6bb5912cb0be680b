"""float32 vs bfloat16 compute for the library's PGD-10 AT training step.

The same ``training.step.make_train_step`` (``pgd_at`` objective, SGD) of a
CIFAR ResNet-18, built once with ``model.dtype=float32`` and once with
``bfloat16`` (float32 parameters either way), timed interleaved on one
device. Reports the median seconds per step and the ratio. On a CPU this says
whether mixed precision is worth turning on there; accelerators are
``gpu.py``'s job.

Usage:
  .venv/bin/python benchmarks/precision.py [--width=0.25 --batch=128 --reps=7]
Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import ml_collections

from robustjax import data, models, sharding, xla_cpu
from robustjax.training import objectives, optimizer, step as step_lib

from results_io import utc_now, write_json  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16")


def _step(dtype: str, width: float):
  model = models.create_model("resnet18", width=width, dtype=dtype)
  objective = objectives.make_objective(objectives.reference_params(
      "pgd_at", eps=8 / 255, step_size=2 / 255, steps=10), model)
  tx, schedule = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="constant")), 100)
  step = step_lib.make_train_step(objective, tx, schedule,
                                  sharding.make_mesh(1), augment=False)
  return step, step_lib.init_state(model, tx, jax.random.key(0), (32, 32, 3))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--out", default=str(ROOT / "benchmarks/results/"
                                      "precision.json"))
  args = p.parse_args()
  xla_cpu.use_xla_convolutions()  # as launch.py does
  test = data.load_split("cifar10", "test")
  batch = {"image": test.images[:args.batch], "label": test.labels[:args.batch]}
  key = jax.random.key(1)
  steps, states, times = {}, {}, {d: [] for d in DTYPES}
  for dtype in DTYPES:  # compile and warm up outside the timed loop
    steps[dtype], state = _step(dtype, args.width)
    states[dtype], _ = steps[dtype](state, batch, key)
    jax.block_until_ready(states[dtype])
  for _ in range(args.reps):  # interleaved: machine noise hits both alike
    for dtype in DTYPES:
      start = time.perf_counter()
      states[dtype], _ = steps[dtype](states[dtype], batch, key)
      jax.block_until_ready(states[dtype])
      times[dtype].append(time.perf_counter() - start)
  medians = {d: statistics.median(t) for d, t in times.items()}
  speedup = medians["float32"] / medians["bfloat16"]
  print(f"PGD-10 AT step, ResNet-18 width {args.width}, batch {args.batch}, "
        f"{jax.devices()[0].platform}: float32 {medians['float32']:.3f} s, "
        f"bfloat16 {medians['bfloat16']:.3f} s (bfloat16 {speedup:.2f}x)")
  out = {"date": utc_now(), "load_average": os.getloadavg(),
         "platform": jax.devices()[0].platform, "width": args.width,
         "batch": args.batch, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
         "seconds_per_step": times,
         "median_s": medians, "bfloat16_speedup": speedup}
  write_json(args.out, out)


if __name__ == "__main__":
  main()
