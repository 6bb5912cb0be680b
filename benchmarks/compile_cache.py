"""What JAX's persistent compilation cache saves on whole launch.py runs.

Each run is a ``launch.py`` command executed twice in fresh processes with
the same, initially empty, cache folder: the first run compiles everything
(cold), the second reads the compiled programs back (warm). Reported: the
process's wall time and the run's own ``wall_time_s`` from report.json.

Usage:
  .venv/bin/python benchmarks/compile_cache.py
  .venv/bin/python benchmarks/compile_cache.py --autoattack-checkpoint=workdirs/exp_fast_at
Writes benchmarks/results/compile_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import utc_now, write_json  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent


def _runs(args: argparse.Namespace) -> dict[str, list[str]]:
  """Name -> launch.py arguments (without --workdir/--compilation_cache)."""
  runs = {"quickstart_smoke": ["--config=configs/quickstart.py:smoke",
                               "--config.progress_bar=false",
                               f"--cpu_devices={args.cpu_devices}"]}
  if args.autoattack_checkpoint:
    runs["autoattack_n64"] = [
        "--config=configs/autoattack.py:n=64",
        f"--config.checkpoint_path={args.autoattack_checkpoint}",
        f"--cpu_devices={args.cpu_devices}"]
  return runs


def _launch(launch_args: list[str], workdir: str, cache: str) -> dict:
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, "launch.py", *launch_args, f"--workdir={workdir}",
       f"--compilation_cache={cache}"], cwd=ROOT, capture_output=True,
      text=True)
  seconds = time.perf_counter() - start
  if proc.returncode:
    sys.exit(f"error: {' '.join(launch_args)} failed:\n{proc.stderr[-2000:]}")
  report = json.loads(Path(workdir, "report.json").read_text())
  return {"process_s": round(seconds, 1),
          "report_wall_time_s": report.get("wall_time_s")}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cpu-devices", type=int, default=2)
  p.add_argument("--autoattack-checkpoint", default="",
                 help="also time the AutoAttack task (64 points) on this "
                      "training workdir")
  p.add_argument("--out", default=str(ROOT / "benchmarks/results/"
                                      "compile_cache.json"))
  args = p.parse_args()
  results = {}
  for name, launch_args in _runs(args).items():
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, "xla")
      cold = _launch(launch_args, os.path.join(tmp, "cold"), cache)
      warm = _launch(launch_args, os.path.join(tmp, "warm"), cache)
    results[name] = {"command": " ".join(["launch.py", *launch_args]),
                     "cold": cold, "warm": warm}
    print(f"{name}: cold {cold['process_s']} s, warm {warm['process_s']} s "
          f"(report wall_time_s {cold['report_wall_time_s']} -> "
          f"{warm['report_wall_time_s']})")
  out = {"date": utc_now(), "load_average": os.getloadavg(),
         "results": results}
  write_json(args.out, out)


if __name__ == "__main__":
  main()
