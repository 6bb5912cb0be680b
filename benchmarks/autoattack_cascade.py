"""The AutoAttack cascade's cost by attack: compile and compute, by chunk size
and by how the batches of the points still robust are padded.

  PYTHONPATH=. .venv/bin/python benchmarks/autoattack_cascade.py \
      --checkpoint=workdirs/ttr/ckpt_small_cnn --n=500 --chunk-size=5
  PYTHONPATH=. .venv/bin/python benchmarks/autoattack_cascade.py \
      --checkpoint=workdirs/ttr/ckpt_small_cnn --n=500 --chunk-size=10 \
      --padding=pow2

One fresh process per call (so every program compiles): the standard
cascade (APGD-CE, APGD-T, FAB-T, Square; the reference's hyper-parameters,
batch 500, 2 CPU devices as ``launch.py --cpu_devices=2``) on the first
``--n`` test points of the checkpoint, through ``run_autoattack``, the
function the ``autoattack`` task calls. Per attack it reports the wall
seconds, the seconds of JAX's compile events within them (tracing,
lowering, XLA compilation) and the batch sizes it ran.

``--chunk-size``: iterations per compiled chunk, for every attack.
``--padding``: ``ladder`` is the library's batch plan (``_batch_plan``:
sizes on a ladder of four per doubling, padding under a quarter);
``pow2`` replaces it, in this process only, by the power-of-two rule
(``n_devices * 2^k`` points, up to ``batch_size``, padding up to a half),
for comparison.

Appends the run to ``--out`` (default
``benchmarks/results/autoattack_cascade.json``) under the key
``<padding>-k<chunk>-n<n>``, with the machine and the date.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="a robustjax training workdir (its latest checkpoint)")
  p.add_argument("--n", type=int, default=500, help="first N test points")
  p.add_argument("--chunk-size", type=int, default=5)
  p.add_argument("--padding", choices=("ladder", "pow2"), default="ladder")
  p.add_argument("--cpu-devices", type=int, default=2)
  p.add_argument("--out", default=str(
      ROOT / "benchmarks" / "results" / "autoattack_cascade.json"))
  return p.parse_args(argv)


def pow2_plan(remaining: int, batch_size: int, n_devices: int
              ) -> tuple[int, int]:
  """``(batches, size)`` with ``size = n_devices * 2^k`` just enough for
  ``remaining``, capped at ``batch_size`` (the last batch padded to it)."""
  per_device = -(-remaining // n_devices)
  size = min(batch_size,
             n_devices * (1 << max(per_device - 1, 0).bit_length()))
  return -(-remaining // size), size


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  t0 = time.time()
  from robustjax import xla_cpu
  xla_cpu.use_xla_convolutions()  # as launch.py does
  import jax
  import jax.monitoring
  jax.config.update("jax_num_cpu_devices", args.cpu_devices)

  compile_s = [0.0]

  def on_duration(event: str, duration: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):
      compile_s[0] += float(duration)

  jax.monitoring.register_event_duration_secs_listener(on_duration)

  from time_to_result import machine
  from results_io import utc_now, write_json
  from configs import autoattack as aa_config
  from robustjax.attacks import autoattack as aa
  from robustjax.tasks import common

  sizes: list[int] = []
  plan = pow2_plan if args.padding == "pow2" else aa._batch_plan

  def recorded_plan(remaining, batch_size, n_devices):
    batches, size = plan(remaining, batch_size, n_devices)
    sizes.append(size)
    return batches, size

  aa._batch_plan = recorded_plan
  config = aa_config.get_config(f"n={args.n}")
  config.checkpoint_path = args.checkpoint
  ckpt = common.restore(config, args.n)
  rows: list[dict] = []
  marks = {"compile": 0.0, "sizes": 0}

  def on_attack(row: dict) -> None:
    rows.append(dict(row, compile_s=round(compile_s[0] - marks["compile"], 2),
                     batch_sizes=sorted(set(sizes[marks["sizes"]:]))))
    marks.update(compile=compile_s[0], sizes=len(sizes))

  model = ckpt.model
  start = time.time()
  result = aa.run_autoattack(
      lambda v, x, k: model.apply(v, x, train=False), ckpt.variables,
      ckpt.split.images[:args.n], ckpt.split.labels[:args.n],
      aa.config_for("standard"), batch_size=int(config.batch_size),
      chunk_size=args.chunk_size, on_attack=on_attack)
  run = {
      "date": utc_now(), "machine": machine(),
      "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
      "checkpoint": args.checkpoint, "n": args.n,
      "chunk_size": args.chunk_size, "padding": args.padding,
      "process_s": round(time.time() - t0, 1),
      "cascade_s": round(time.time() - start, 1),
      "compile_s": round(compile_s[0], 1),
      "clean_acc": result.clean_acc, "robust_acc": result.robust_acc,
      "by_attack": rows,
  }
  label = f"{args.padding}-k{args.chunk_size}-n{args.n}"
  report = json.loads(Path(args.out).read_text()) if os.path.exists(
      args.out) else {}
  report[label] = run
  write_json(args.out, report)
  print(f"{label}: process {run['process_s']} s, cascade {run['cascade_s']} s"
        f" (compile {run['compile_s']} s), clean {result.clean_acc:.3f}, "
        f"robust {result.robust_acc:.3f}")
  for row in rows:
    print(f"  {row['attack']}: {row['seconds']} s (compile "
          f"{row['compile_s']} s), batches {row['batch_sizes']}, robust "
          f"{row['robust_points']}")


if __name__ == "__main__":
  main()
