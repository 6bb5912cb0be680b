"""Where XLA:CPU's buffers get their memory: whole ``launch.py`` runs under
glibc's default malloc, under its huge-page tunable, and (optionally) under
tcmalloc, interleaved, side by side.

  PYTHONPATH=. .venv/bin/python benchmarks/host_memory.py \
      --checkpoint=workdirs/ttr/ckpt_small_cnn
  PYTHONPATH=. .venv/bin/python benchmarks/host_memory.py \
      --checkpoint=workdirs/ttr/ckpt_small_cnn --reps=3 \
      --tcmalloc=/path/to/libtcmalloc_minimal.so.4

Each run is one fresh ``launch.py --host_allocator=system`` process (the
allocator is set by this script through the environment, not by
``launch.py``'s own restart), compiled programs read back from a
compilation cache that an untimed first run of each workload filled, so
the figures are compute, not compilation. Workloads (``--workloads``):

  ``apgd``      AutoAttack's APGD-CE alone (100 steps) on the first 500
                test points of ``--checkpoint``
  ``evaluate``  the ``evaluate`` task: PGD-20 on the first 1000 test points
  ``train``     the quickstart recipe (PGD-10 AT, ResNet-18 width 0.25) for
                ``--train-steps`` steps, no evaluation

Allocators: ``glibc`` (no tunable), ``hugetlb``
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, what ``launch.py`` restarts
with where tcmalloc is missing), ``tcmalloc`` (``LD_PRELOAD=--tcmalloc``,
by default the system's tcmalloc when it has one). For each
it reports the median over ``--reps`` of the process's wall, user and
system seconds, minor page faults and peak resident memory (from
``wait4``), and each allocator's wall time relative to ``glibc``.
Writes ``--out`` (default ``benchmarks/results/host_memory.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from results_io import utc_now, write_json  # noqa: E402
from robustjax import host_memory  # noqa: E402
from time_to_result import machine, time_process  # noqa: E402

HUGETLB = "glibc.malloc.hugetlb=1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="a robustjax training workdir (apgd and evaluate)")
  p.add_argument("--workloads", default="apgd,evaluate,train")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--train-steps", type=int, default=40)
  p.add_argument("--cpu-devices", type=int, default=2)
  p.add_argument("--tcmalloc", default=host_memory.find_tcmalloc() or "",
                 help="libtcmalloc(_minimal).so to LD_PRELOAD (default: the "
                      "system's, if any; '' leaves tcmalloc out)")
  p.add_argument("--out", default=str(
      ROOT / "benchmarks" / "results" / "host_memory.json"))
  return p.parse_args(argv)


def workload_args(name: str, args: argparse.Namespace) -> list[str]:
  """``launch.py`` arguments of workload ``name`` (workdir added later)."""
  ckpt = f"--config.checkpoint_path={args.checkpoint}"
  if name == "apgd":
    return ["--config=configs/autoattack.py:version=custom,attacks=apgd-ce,"
            "n=500", ckpt]
  if name == "evaluate":
    return ["--config=configs/evaluate.py:n=1000", ckpt]
  if name == "train":
    return ["--config=configs/quickstart.py",
            f"--config.num_steps={args.train_steps}",
            "--config.eval.every_steps=100000",
            "--config.final_eval.num_examples=100",
            "--config.final_eval.attack.steps=0",
            f"--config.checkpoint.every_steps={args.train_steps}"]
  raise SystemExit(f"unknown workload {name!r}; pick from apgd, evaluate, "
                   "train")


def allocator_env(name: str, args: argparse.Namespace) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
  env["PYTHONPATH"] = str(ROOT)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if name == "hugetlb":
    env["GLIBC_TUNABLES"] = HUGETLB
  if name == "tcmalloc":
    env["LD_PRELOAD"] = args.tcmalloc
  return env


def run_once(cmd: list[str], env: dict[str, str], log: Path
             ) -> dict[str, Any]:
  """One process: wall seconds and its ``wait4`` resource usage."""
  wall, usage = time_process(cmd, env, log)
  return {"wall": round(wall, 2), "user": round(usage.ru_utime, 2),
          "sys": round(usage.ru_stime, 2), "minflt": usage.ru_minflt,
          "maxrss_mb": round(usage.ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  allocators = ["glibc", "hugetlb"] + (["tcmalloc"] if args.tcmalloc else [])
  if args.tcmalloc and host_memory.find_tcmalloc() != args.tcmalloc and (
      not os.path.isfile(args.tcmalloc)):
    sys.exit(f"--tcmalloc={args.tcmalloc} is not a file; install tcmalloc "
             "(Debian/Ubuntu: libtcmalloc-minimal4) or drop the flag")
  tmp = Path(tempfile.mkdtemp(prefix="host-memory-"))
  report: dict[str, Any] = dict(
      date=utc_now(), command=" ".join(["python"] + sys.argv),
      machine_at_start=machine(), reps=args.reps, workloads={})
  for workload in args.workloads.split(","):
    cache = tmp / f"xla-{workload}"
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in allocators}
    for rep in range(-1, args.reps):  # rep -1 fills the compilation cache
      for allocator in allocators:
        name = f"wd-{workload}-{allocator}-{rep}"
        cmd = [sys.executable, "launch.py", *workload_args(workload, args),
               f"--workdir={tmp / name}",
               f"--compilation_cache={cache}",
               f"--cpu_devices={args.cpu_devices}", "--host_allocator=system"]
        run = run_once(cmd, allocator_env(allocator, args),
                       tmp / f"{name}.log")
        if rep >= 0:
          runs[allocator].append(run)
          print(f"{workload} {allocator} rep {rep}: {run}", flush=True)
    median = {a: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
              for a, rs in runs.items()}
    report["workloads"][workload] = {
        "launch_args": workload_args(workload, args), "runs": runs,
        "median": median,
        "wall_over_glibc": {a: round(median[a]["wall"]
                                     / median["glibc"]["wall"], 3)
                            for a in allocators}}
  report["machine_at_end"] = machine()
  write_json(args.out, report)
  for workload, w in report["workloads"].items():
    for a in allocators:
      m = w["median"][a]
      print(f"{workload:9s} {a:9s} wall {m['wall']:7.1f} s  user "
            f"{m['user']:7.1f}  sys {m['sys']:6.1f}  faults "
            f"{m['minflt']:>9.0f}  rss {m['maxrss_mb']:6.0f} MB  "
            f"x{w['wall_over_glibc'][a]:.3f}")


if __name__ == "__main__":
  main()
