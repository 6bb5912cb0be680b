"""Does the input pipeline keep the training step fed?

Three timings of the quickstart's training (ResNet-18 width 0.25, batch 128,
FGSM-RS, on-device crop + flip, the embedded CIFAR-10 train split), on the
same mesh the quickstart uses:

  pipeline alone  ``TrainBatches.iterate``: gather shuffled uint8 rows on the
                  host, place them as a sharded global batch (background
                  thread, 2 batches ahead), nothing else
  step alone      the compiled step on one batch already on the devices
  fed             the step fed by the pipeline, as ``training.loop`` runs it

Rounds of ``--steps`` steps alternate between "step alone" and "fed"; the
medians of the per-step times are compared. ``fed / step alone - 1`` is the
time the pipeline adds to a step (0 = never starves it).

Usage:
  .venv/bin/python benchmarks/input_pipeline.py [--devices=2 --rounds=5]
Writes benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from results_io import utc_now, write_json  # benchmarks/ is on sys.path when run as a script


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=int, default=2,
                 help="JAX CPU devices (the quickstart's --cpu_devices)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20, help="steps per round")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--out", default=str(ROOT / "benchmarks/results/"
                                      "input_pipeline.json"))
  args = p.parse_args()
  import jax
  from robustjax import xla_cpu
  xla_cpu.use_xla_convolutions()  # as launch.py does
  jax.config.update("jax_num_cpu_devices", args.devices)
  import ml_collections
  from robustjax import data, models, sharding
  from robustjax.data.pipeline import TrainBatches
  from robustjax.training import objectives, optimizer, step as step_lib

  mesh = sharding.make_mesh(args.devices)
  model = models.create_model("resnet18", width=0.25)
  objective = objectives.make_objective(objectives.reference_params(
      "fgsm_rs", eps=8 / 255, step_size=10 / 255), model)
  tx, schedule = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="constant")), 10 ** 6)
  step = step_lib.make_train_step(objective, tx, schedule, mesh, augment=True)
  state = sharding.put_replicated(
      step_lib.init_state(model, tx, jax.random.key(0), (32, 32, 3)), mesh)
  key = jax.random.key(1)
  batches = TrainBatches(data.load_split("cifar10", "train"), args.batch,
                         seed=0, mesh=mesh)

  def pipeline_alone(start: int) -> float:
    t0 = time.perf_counter()
    for _, batch in batches.iterate(start, args.steps):
      jax.block_until_ready(batch)
    return (time.perf_counter() - t0) / args.steps

  def step_alone(state, batch):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, batch, key)
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - t0) / args.steps

  def fed(state, start: int):
    t0 = time.perf_counter()
    for _, batch in batches.iterate(start, args.steps):
      state, metrics = step(state, batch, key)
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - t0) / args.steps

  fixed = batches.batch(0)
  state, _ = step_alone(state, fixed)  # compile and warm up
  state, _ = fed(state, 0)
  times = {"pipeline_alone": [], "step_alone": [], "fed": []}
  start = args.steps
  for r in range(args.rounds):
    times["pipeline_alone"].append(pipeline_alone(start))
    order = ("step_alone", "fed") if r % 2 == 0 else ("fed", "step_alone")
    for name in order:  # alternate which goes first: noise hits both
      if name == "fed":
        state, t = fed(state, start)
      else:
        state, t = step_alone(state, fixed)
      times[name].append(t)
    start += args.steps
  med = {k: statistics.median(v) for k, v in times.items()}
  overhead = med["fed"] / med["step_alone"] - 1
  headroom = med["step_alone"] / med["pipeline_alone"]
  print(f"ResNet-18 w0.25 FGSM-RS step, batch {args.batch}, {args.devices} "
        f"CPU devices, medians of {args.rounds} rounds x {args.steps} steps:")
  print(f"  pipeline alone {1e3 * med['pipeline_alone']:.1f} ms/batch "
        f"({args.batch / med['pipeline_alone']:.0f} img/s)")
  print(f"  step alone     {1e3 * med['step_alone']:.1f} ms/step "
        f"({args.batch / med['step_alone']:.0f} img/s)")
  print(f"  fed            {1e3 * med['fed']:.1f} ms/step "
        f"({args.batch / med['fed']:.0f} img/s): the pipeline adds "
        f"{100 * overhead:+.1f}%; it could feed {headroom:.0f}x this step")
  write_json(args.out, {
      "date": utc_now(), "load_average": os.getloadavg(),
      "devices": args.devices, "batch": args.batch, "steps": args.steps,
      "rounds": args.rounds, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
      "seconds_per_step": times, "median_s": med,
      "fed_overhead_fraction": overhead, "pipeline_headroom": headroom})


if __name__ == "__main__":
  main()
