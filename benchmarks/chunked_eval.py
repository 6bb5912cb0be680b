"""Evaluation's attack loop as compiled chunks: compile and run time in k.

  PYTHONPATH=. .venv/bin/python benchmarks/chunked_eval.py \\
      --checkpoints=workdirs/ttr/ckpt_small_cnn,workdirs/ttr/ckpt_resnet18

For each checkpoint and attack, ``evaluation.make_eval_step`` is built with
``chunk_size`` k for every k of ``--chunks`` (0: every iteration in one
program) and run over the first ``--n`` test
points in batches of ``--batch``, as the ``evaluate`` task does, all in
this one process:

- ``first pass``: the first run over the points, tracing and compiling
  included (what a cold ``launch.py evaluate`` pays), with the seconds JAX
  itself reports for tracing, lowering and XLA compilation
  (``jax.monitoring`` duration events) split out;
- ``second pass``: the median of ``--reps`` further runs (compiled);
- the accuracies, which must be equal for every k.

The structures are interleaved with a rotating order for the later passes.
No persistent compilation cache is used. Writes ``--out`` (by default
``benchmarks/results/chunked_eval.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The compile-time events JAX reports (jax/_src/dispatch.py, compiler.py).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoints", default=",".join(
      str(ROOT / "workdirs" / "ttr" / f"ckpt_{m}")
      for m in ("small_cnn", "resnet18")),
                 help="comma-separated checkpoint folders (time_to_result.py"
                      " makes these)")
  p.add_argument("--attacks", default="pgd:20",
                 help="comma-separated name:steps, e.g. pgd:20,apgd-ce:100")
  p.add_argument("--chunks", default="0,2,5,10",
                 help="chunk sizes; 0 = one program")
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--cpu-devices", type=int, default=2)
  p.add_argument("--ynnpack-convolutions", action="store_true",
                 help="keep XLA:CPU's default YNNPACK convolutions "
                      "(launch.py --ynnpack_convolutions)")
  p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                      "chunked_eval.json"))
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  """Runs the measurement and writes the JSON."""
  args = parse_args(argv)
  import jax
  jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  from jax import monitoring
  if not args.ynnpack_convolutions:  # what launch.py runs with
    from robustjax import xla_cpu
    xla_cpu.use_xla_convolutions()
  from robustjax import attacks, checkpoint, evaluation, models, sharding
  from robustjax.data import sources
  sys.path.insert(0, str(ROOT / "benchmarks"))
  from results_io import utc_now, write_json
  from time_to_result import machine

  compile_s = {name: 0.0 for name in COMPILE_EVENTS}

  def listen(event: str, duration: float, **_: Any) -> None:
    if event in compile_s:
      compile_s[event] += duration
  monitoring.register_event_duration_secs_listener(listen)

  mesh = sharding.make_mesh(args.cpu_devices)
  split = sources.load_split("cifar10", "test")
  load_start = os.getloadavg()
  results: dict[str, Any] = {}
  for path in args.checkpoints.split(","):
    tree = checkpoint.load(path)
    model = models.build_model(tree["meta"]["model"])
    variables = {"params": tree["params"],
                 "batch_stats": tree["batch_stats"]}
    for spec in args.attacks.split(","):
      name, steps = spec.split(":")
      attack = attacks.build(dict(name=name, steps=int(steps)))
      rows: dict[str, dict[str, Any]] = {}

      def evaluate(step):
        return evaluation.evaluate(model, variables, split, mesh,
                                   attack=attack, batch_size=args.batch,
                                   num_examples=args.n, eval_step=step)

      steps_by_k = {}
      for k in (int(c) for c in args.chunks.split(",")):
        before = dict(compile_s)
        t0 = time.perf_counter()
        step = evaluation.make_eval_step(model, attack, mesh, chunk_size=k)
        result = evaluate(step)
        first = time.perf_counter() - t0
        spent = {e.rsplit("/", 1)[-1]: compile_s[e] - before[e]
                 for e in COMPILE_EVENTS}
        steps_by_k[k] = step
        rows[str(k)] = dict(first_pass_s=first, compile_events_s=spent,
                            clean_acc=result["clean_acc"],
                            adv_acc=result["adv_acc"], later_pass_s=[])
        print(f"{Path(path).name} {attack.label} k={k}: first pass "
              f"{first:.1f} s (trace {spent['jaxpr_trace_duration']:.1f}, lower "
              f"{spent['jaxpr_to_mlir_module_duration']:.1f}, compile "
              f"{spent['backend_compile_duration']:.1f}), "
              f"adv {result['adv_acc']:.4f}", flush=True)
      ks = list(steps_by_k)
      for r in range(args.reps):
        for k in ks[r % len(ks):] + ks[:r % len(ks)]:
          t0 = time.perf_counter()
          evaluate(steps_by_k[k])
          rows[str(k)]["later_pass_s"].append(time.perf_counter() - t0)
      for k, row in rows.items():
        row["later_pass_median_s"] = statistics.median(row["later_pass_s"])
        print(f"{Path(path).name} {attack.label} k={k}: later passes "
              f"{row['later_pass_median_s']:.1f} s (median of {args.reps})",
              flush=True)
      accs = {(row["clean_acc"], row["adv_acc"]) for row in rows.values()}
      results[f"{Path(path).name}/{attack.label}"] = dict(
          structures=rows, same_accuracies_for_every_k=len(accs) == 1)
  write_json(args.out, dict(
      date=utc_now(), machine=machine(), load_average_at_start=load_start,
      load_average_at_end=os.getloadavg(),
      command=" ".join(["python"] + sys.argv), n=args.n, batch=args.batch,
      reps=args.reps, cpu_devices=args.cpu_devices,
      xla_convolutions=not args.ynnpack_convolutions, results=results))


if __name__ == "__main__":
  main()
