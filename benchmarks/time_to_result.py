"""Time to result: a user's command, whole process, robustjax against PyTorch.

  PYTHONPATH=. .venv/bin/python benchmarks/time_to_result.py
  PYTHONPATH=. .venv/bin/python benchmarks/time_to_result.py --quick
  PYTHONPATH=. .venv/bin/python benchmarks/time_to_result.py \
      --workloads=evaluate --models=small_cnn --eval-n=500,1000

Every measurement is one fresh process, timed from the parent's clock just
before it starts to its exit:

- robustjax: ``launch.py`` with a task config (``configs/evaluate.py``,
  ``configs/autoattack.py``, ``configs/quickstart.py``), the command a user
  types, run through a thin wrapper (``--jax-worker``) that only adds
  timestamps and listens to JAX's own compile-time events;
- PyTorch: ``benchmarks/ttr_torch.py``, a plain PyTorch script doing the
  same work (torchattacks ``PGD`` / the AutoAttack ``standard`` attacks /
  a training loop) on the same weights and points.

robustjax runs **cold** (its persistent compilation cache a fresh empty
folder: every program compiles) and **warm** (the same folder again, filled
by the cold run: programs are read back). The PyTorch script has nothing to
compile; it runs twice and both runs are kept (its ``cold`` and ``warm``
are its first and second process). Within a round the order is: robustjax
cold, PyTorch, robustjax warm, PyTorch; rounds repeat ``--reps`` times and
the figures are medians.

Workloads (each on every ``--models`` entry, except ``train``):

- ``evaluate``: ``configs/evaluate.py:steps=20,n=N`` (clean + PGD-20,
  L-inf 8/255, step 2/255, batch 512) against torchattacks ``PGD`` (20 steps,
  random start) for N in ``--eval-n``;
- ``autoattack``: ``configs/autoattack.py:n=N`` (APGD-CE, APGD-T, FAB-T,
  Square; batch 500) against the same four torchattacks attacks configured as
  the original AutoAttack, each on the points still robust, for N in
  ``--aa-n``;
- ``train``: ``configs/quickstart.py`` (FGSM-RS, ResNet-18 width 0.25, batch
  128) for ``--train-steps`` steps (no evaluation during training; a clean
  check of 100 test points and a checkpoint at the end) against the same
  recipe as a PyTorch loop.

The weights: ``--ckpt-root`` holds one short quickstart-recipe training run
per model (made by ``launch.py`` on the first call, ``--ckpt-steps`` steps);
the script converts each checkpoint's parameters to the PyTorch module of
the same architecture (conv HWIO -> OIHW, dense transposed, BatchNorm
statistics copied) and checks the logits agree on 256 test points before
timing anything (``weights`` in the JSON).

Phases reported per process (seconds):

- ``start_imports``: process start, interpreter, imports, flag parsing, up
  to the first line of the task (robustjax: entry into ``tasks.run``;
  PyTorch: after ``import torch, torchattacks``);
- ``data``: reading the CIFAR-10 split (robustjax: ``data.load_split`` /
  ``data.train_val``; PyTorch: the same decoded ``.npz``);
- ``model``: restoring the checkpoint (robustjax ``checkpoint.load``) or
  building the model and loading the state_dict (PyTorch);
- ``compile``: robustjax only, the sum of JAX's compile-time events
  (``jax.monitoring`` durations: tracing to a jaxpr, lowering to MLIR, XLA
  backend compilation, and cache reads on a warm run). Compilation runs on
  the main thread between steps, so this is time not spent computing;
- ``compute``: the rest of the task: total minus the other phases minus
  ``exit`` (the steady compute, plus small host work: batching, logging,
  writing reports and checkpoints);
- ``exit``: from the end of the task to the process's exit;
- ``total``: the parent's wall clock for the whole process;
- ``cpu``: the process's user + system CPU seconds (``os.wait4``), which a
  machine shared with other jobs distorts less than wall time.

On a warm run ``compile`` is not zero: tracing and lowering are not cached,
only XLA's compilation is read back.

Allocators: the robustjax side runs ``launch.py`` as a user does, so
``--host_allocator`` (``--host-allocator``, default ``auto``) restarts it
with tcmalloc where the system has it, else glibc's huge pages
(robustjax/host_memory.py); every robustjax run records the ``LD_PRELOAD``
and ``GLIBC_TUNABLES`` it ran with. The PyTorch script runs with the
system's malloc unless ``--torch-preload`` names a library to preload
(``ld_preload`` in its runs).

Writes ``benchmarks/results/time_to_result.json`` (``--quick``:
``time_to_result_quick.json``) with the machine, the load average before and
after every process, every run's phases and the medians (rewritten after
every process, so an interrupted run keeps what it measured, marked
``partial``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"small_cnn": 1.0, "resnet18": 0.25}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workloads", default="evaluate,autoattack,train")
  p.add_argument("--models", default="small_cnn,resnet18")
  p.add_argument("--eval-n", default="500,1000",
                 help="test points for evaluate (comma-separated)")
  p.add_argument("--aa-n", default="500",
                 help="test points for autoattack (comma-separated)")
  p.add_argument("--eval-chunk-size", type=int, default=-1,
                 help="the evaluate task's --config.eval.chunk_size (attack "
                      "steps per compiled chunk; 0 = one program); -1 keeps "
                      "configs/evaluate.py's default")
  p.add_argument("--train-steps", type=int, default=50)
  p.add_argument("--reps", type=int, default=1)
  p.add_argument("--cpu-devices", type=int, default=2,
                 help="launch.py --cpu_devices (make quickstart's choice)")
  p.add_argument("--host-allocator", default="auto",
                 choices=("auto", "tcmalloc", "hugetlb", "system"),
                 help="launch.py --host_allocator (robustjax/host_memory.py); "
                      "each run records the allocator it ran with")
  p.add_argument("--torch-preload", default="",
                 help="LD_PRELOAD of the PyTorch processes, e.g. "
                      "libtcmalloc_minimal.so.4 to give them the allocator "
                      "robustjax's --host-allocator picks (default: none, "
                      "as a user runs a script)")
  p.add_argument("--ckpt-root", default=str(ROOT / "workdirs" / "ttr"))
  p.add_argument("--ckpt-steps", type=int, default=40)
  p.add_argument("--quick", action="store_true",
                 help="a smoke run: small CNN, 64 evaluate points, 16 "
                 "AutoAttack points, 5 training steps")
  p.add_argument("--out", default="")
  return p.parse_args(argv)


# ---------------------------------------------------------------------------
# The machine.


def machine() -> dict[str, Any]:
  """CPU model, vector flags, cores, versions and the load average now."""
  info: dict[str, Any] = {"platform": platform.platform(),
                          "python": platform.python_version(),
                          "cpu_count": os.cpu_count(),
                          "load_average": os.getloadavg()}
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         timeout=10).stdout
    for line in out.splitlines():
      key, _, value = line.partition(":")
      if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core",
                         "Core(s) per socket", "Socket(s)"):
        info[key.strip()] = value.strip()
      if key.strip() == "Flags":
        flags = value.split()
        info["avx2"] = "avx2" in flags
        info["avx512"] = sorted(f for f in flags if f.startswith("avx512"))
  except (OSError, subprocess.SubprocessError):
    pass
  versions = {}
  for name in ("jax", "jaxlib", "flax", "numpy", "torch", "torchattacks"):
    try:
      from importlib import metadata
      versions[name] = metadata.version(name)
    except Exception:  # noqa: BLE001  (a missing package is just not listed)
      pass
  info["versions"] = versions
  return info


# ---------------------------------------------------------------------------
# The robustjax side: launch.py with timestamps (``--jax-worker``).


def jax_worker(launch_argv: list[str]) -> None:
  """Runs ``launch.py`` in this process, adding timestamps and compile events.

  Nothing in the library changes: the wrapper imports the modules
  ``launch.main`` imports anyway, wraps ``tasks.run``, the data loaders and
  ``checkpoint.load`` in timers, and registers a ``jax.monitoring``
  listener. It prints one ``TTR {json}`` line when the task returns.
  """
  t0 = float(os.environ.get("TTR_T0", time.time()))
  stamps: dict[str, float] = {}
  phases = {"data": 0.0, "model": 0.0}
  events: dict[str, float] = {}
  counts: dict[str, int] = {}
  sys.path.insert(0, str(ROOT))
  import jax
  import jax.monitoring

  def on_duration(event: str, duration: float, **_: Any) -> None:
    events[event] = events.get(event, 0.0) + float(duration)
    counts[event] = counts.get(event, 0) + 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  from absl import app

  import launch
  from robustjax import checkpoint, data, tasks
  from robustjax.data import sources
  depth = [0]

  def timed(fn, phase):
    def wrapper(*args, **kwargs):
      depth[0] += 1
      start = time.time()
      try:
        return fn(*args, **kwargs)
      finally:
        depth[0] -= 1
        if depth[0] == 0:
          phases[phase] += time.time() - start
    return wrapper

  data.load_split = timed(data.load_split, "data")
  data.train_val = timed(data.train_val, "data")
  sources.load_split = timed(sources.load_split, "data")
  checkpoint.load = timed(checkpoint.load, "model")
  run = tasks.run

  def timed_run(config, workdir):
    stamps["task_start"] = time.time() - t0
    report: dict[str, Any] = {}
    try:
      report = run(config, workdir)
      return report
    finally:
      stamps["task_end"] = time.time() - t0
      result = {k: v for k, v in report.items()
                if k.endswith("acc") or k in ("robust_acc_after",
                                              "by_attack")}
      allocator = {k: os.environ.get(k, "")
                   for k in ("LD_PRELOAD", "GLIBC_TUNABLES")}
      print("TTR " + json.dumps(dict(stamps=stamps, phases=phases,
                                     events=events, counts=counts,
                                     result=result, allocator=allocator),
                                default=str),
            flush=True)

  tasks.run = timed_run
  app.run(launch.main, argv=["launch.py"] + launch_argv,
          flags_parser=launch.parse_flags)


COMPILE_EVENTS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration",
                  "backend_compile_duration", "cache_retrieval_time_sec")


def compile_seconds(events: dict[str, float]) -> float:
  """Seconds of tracing, lowering, compiling and cache reads in ``events``."""
  return sum(v for k, v in events.items()
             if any(k.endswith(e) for e in COMPILE_EVENTS))


# ---------------------------------------------------------------------------
# Running processes.


def time_process(cmd: list[str], env: dict[str, str], log: Path
                 ) -> tuple[float, Any]:
  """Runs ``cmd`` as a fresh process, stdout to ``log`` and stderr to
  ``log.stderr``; its wall seconds and ``wait4`` resource usage. Exits with
  the end of its stderr if it fails."""
  with open(log, "w") as out, open(f"{log}.stderr", "w") as err:
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.time() - start
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n"
                     f"{Path(f'{log}.stderr').read_text()[-3000:]}")
  return total, usage


def run_process(cmd: list[str], env: dict[str, str], log: Path
                ) -> dict[str, Any]:
  """Runs ``cmd`` as a fresh process; its wall time, its TTR line, the load."""
  load_before = os.getloadavg()
  total, usage = time_process(cmd, dict(env, TTR_T0=repr(time.time())), log)
  stdout = log.read_text()
  line = [ln for ln in stdout.splitlines() if ln.startswith("TTR ")]
  if not line:
    raise SystemExit(f"no TTR line from {' '.join(cmd)} (log {log})")
  return dict(total=total, cpu_user=usage.ru_utime, cpu_sys=usage.ru_stime,
              report=json.loads(line[-1][4:]),
              load_before=load_before, load_after=os.getloadavg())


def jax_phases(run: dict[str, Any]) -> dict[str, float]:
  """The phases of one robustjax process."""
  r = run["report"]
  st = r["stamps"]
  out = dict(start_imports=st["task_start"], data=r["phases"]["data"],
             model=r["phases"]["model"],
             compile=compile_seconds(r["events"]),
             exit=run["total"] - st["task_end"], total=run["total"],
             cpu=run["cpu_user"] + run["cpu_sys"])
  out["compute"] = (st["task_end"] - st["task_start"] - out["data"]
                    - out["model"] - out["compile"])
  return out


def torch_phases(run: dict[str, Any]) -> dict[str, float]:
  """The phases of one PyTorch process."""
  st = run["report"]["stamps"]
  return dict(start_imports=st["imports"], data=st["data"] - st["imports"],
              model=st["model"] - st["data"], compile=0.0,
              compute=st["compute"] - st["model"],
              exit=run["total"] - st["compute"], total=run["total"],
              cpu=run["cpu_user"] + run["cpu_sys"])


def launch_cmd(args: argparse.Namespace, config: str, workdir: str,
               cache: str, extra: list[str]) -> list[str]:
  """The robustjax command (through the timing wrapper)."""
  return [sys.executable, str(Path(__file__).resolve()), "--jax-worker",
          f"--config={config}", f"--workdir={workdir}",
          f"--compilation_cache={cache}",
          f"--cpu_devices={args.cpu_devices}",
          f"--host_allocator={args.host_allocator}", *extra]


# ---------------------------------------------------------------------------
# The weights.


def ensure_checkpoint(args: argparse.Namespace, name: str, env: dict
                      ) -> str:
  """A short quickstart-recipe run of model ``name`` (trained if absent)."""
  workdir = os.path.join(args.ckpt_root, f"ckpt_{name}")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    print(f"training the {name} checkpoint ({args.ckpt_steps} steps)",
          flush=True)
    cmd = [sys.executable, "launch.py", "--config=configs/quickstart.py",
           f"--config.model.name={name}",
           f"--config.model.width={MODELS[name]}",
           f"--config.num_steps={args.ckpt_steps}",
           "--config.eval.every_steps=100000",
           "--config.final_eval.num_examples=100",
           "--config.final_eval.attack.steps=0",
           f"--config.checkpoint.every_steps={args.ckpt_steps}",
           f"--workdir={workdir}", "--compilation_cache=",
           f"--cpu_devices={args.cpu_devices}"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
  return workdir


def export_weights(workdir: str, out_path: str) -> dict[str, Any]:
  """Converts the checkpoint at ``workdir`` into a PyTorch module's weights.

  Writes ``{'spec', 'state_dict'}`` to ``out_path`` and returns the logits
  check on 256 test points (max abs difference, argmax agreement).
  """
  import jax
  import numpy as np
  import torch
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import torch_reference
  import ttr_torch
  from robustjax import checkpoint, data, models
  tree = checkpoint.load(workdir)
  spec = dict(tree["meta"]["model"])
  model = models.build_model(spec)
  spec.update(width=float(getattr(model, "width", 1.0)),
              mean=tuple(float(m) for m in model.mean),
              std=tuple(float(s) for s in model.std))
  variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
  twin = ttr_torch.build(spec)
  torch_reference.load_flax_variables(twin, variables)
  twin.eval()
  split = data.load_split("cifar10", "test")
  x = np.asarray(split.images[:256], np.float32) / 255.0
  ref = np.asarray(jax.jit(lambda v, z: model.apply(v, z, train=False))(
      variables, x))
  with torch.no_grad():
    got = twin(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
  diff = float(np.max(np.abs(ref - got)))
  agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
  if diff > 1e-3 or agree < 1.0:
    raise SystemExit(f"{spec['name']}: the PyTorch twin's logits differ "
                     f"(max |diff| {diff:.2e}, argmax agreement {agree})")
  torch.save({"spec": spec, "state_dict": twin.state_dict()}, out_path)
  return dict(spec=spec, checkpoint=workdir, step=int(tree["step"]),
              logits_max_abs_diff=diff, argmax_agreement=agree)


# ---------------------------------------------------------------------------
# The measurement.


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
  """The per-phase medians of ``runs``."""
  return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure(args: argparse.Namespace, label: str, jax_config: str,
            jax_extra: list[str], torch_argv: list[str], tmp: Path,
            env: dict, save: Any = None) -> dict[str, Any]:
  """Rounds of robustjax cold, PyTorch, robustjax warm, PyTorch.

  ``save(partial)`` (if given) is called after every process with the runs
  so far, so an interrupted measurement keeps what it measured.
  """
  runs: dict[str, list[dict[str, Any]]] = {"robustjax_cold": [],
                                           "robustjax_warm": [],
                                           "pytorch": []}
  for r in range(args.reps):
    cache = tmp / f"xla-{label}-{r}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    for side in ("robustjax_cold", "pytorch", "robustjax_warm", "pytorch"):
      workdir = tmp / f"wd-{label}-{r}-{side}-{len(runs[side])}"
      shutil.rmtree(workdir, ignore_errors=True)
      workdir.mkdir(parents=True)
      log = tmp / f"{workdir.name}.log"
      if side == "pytorch":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "ttr_torch.py"),
               *torch_argv, f"--workdir={workdir}"]
        torch_env = dict(env, LD_PRELOAD=args.torch_preload) if (
            args.torch_preload) else env
        run = run_process(cmd, torch_env, log)
        run["phases"] = torch_phases(run)
        run["ld_preload"] = args.torch_preload
      else:
        cmd = launch_cmd(args, jax_config, str(workdir), str(cache),
                         jax_extra)
        run = run_process(cmd, env, log)
        run["phases"] = jax_phases(run)
      run["command"] = " ".join(cmd[1:])
      runs[side].append(run)
      if save is not None:
        save({"partial": True, "runs": runs})
      ph = run["phases"]
      print(f"  {label} {side}: total {ph['total']:.1f} s (start+imports "
            f"{ph['start_imports']:.1f}, data {ph['data']:.1f}, model "
            f"{ph['model']:.1f}, compile {ph['compile']:.1f}, compute "
            f"{ph['compute']:.1f}, exit {ph['exit']:.1f}; CPU "
            f"{ph['cpu']:.1f} s) load "
            f"{run['load_before'][0]:.1f}->{run['load_after'][0]:.1f}",
            flush=True)
  med = {side: median_phases([r["phases"] for r in rs])
         for side, rs in runs.items()}
  torch_total = med["pytorch"]["total"]
  torch_cpu = med["pytorch"]["cpu"]
  return dict(
      runs=runs, median=med,
      cpu_pytorch_over_robustjax={
          "cold": torch_cpu / med["robustjax_cold"]["cpu"],
          "warm": torch_cpu / med["robustjax_warm"]["cpu"]},
      pytorch_over_robustjax={
          "cold": torch_total / med["robustjax_cold"]["total"],
          "warm": torch_total / med["robustjax_warm"]["total"]},
      robustjax_over_pytorch={
          "cold": med["robustjax_cold"]["total"] / torch_total,
          "warm": med["robustjax_warm"]["total"] / torch_total})


def main(argv: list[str] | None = None) -> None:
  """Prepares the weights, times every workload, writes the JSON."""
  args = parse_args(argv)
  if args.quick:
    args.models, args.eval_n, args.aa_n = "small_cnn", "64", "16"
    args.train_steps = 5
  out = args.out or str(ROOT / "benchmarks" / "results" / (
      "time_to_result_quick.json" if args.quick else "time_to_result.json"))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                     if p])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  workloads = args.workloads.split(",")
  models = args.models.split(",")
  result: dict[str, Any] = dict(
      command=" ".join(["python"] + sys.argv), machine_at_start=machine(),
      cpu_devices=args.cpu_devices, reps=args.reps, weights={},
      workloads={})
  tmp = Path(tempfile.mkdtemp(prefix="ttr-"))
  print("scratch and logs:", tmp, flush=True)
  weights = {}
  if {"evaluate", "autoattack"} & set(workloads):
    for name in models:
      ckpt = ensure_checkpoint(args, name, env)
      path = str(tmp / f"{name}.pt")
      result["weights"][name] = export_weights(ckpt, path)
      weights[name] = (ckpt, path)
      print(f"weights {name}: {result['weights'][name]}", flush=True)
  for workload in workloads:
    jobs = []
    if workload == "evaluate":
      for name in models:
        for n in (int(v) for v in args.eval_n.split(",")):
          batch = min(n, 512)  # configs/evaluate.py's batch, or all n
          jobs.append((f"evaluate-{name}-{n}",
                       f"configs/evaluate.py:steps=20,n={n}",
                       [f"--config.checkpoint_path={weights[name][0]}",
                        f"--config.eval.batch_size={batch}"] + (
                            [f"--config.eval.chunk_size={args.eval_chunk_size}"]
                            if args.eval_chunk_size >= 0 else []),
                       ["evaluate", f"--weights={weights[name][1]}",
                        f"--n={n}", f"--batch={batch}"]))
    elif workload == "autoattack":
      for name in models:
        for n in (int(v) for v in args.aa_n.split(",")):
          jobs.append((f"autoattack-{name}-{n}",
                       f"configs/autoattack.py:n={n}",
                       [f"--config.checkpoint_path={weights[name][0]}"],
                       ["autoattack", f"--weights={weights[name][1]}",
                        f"--n={n}"]))
    elif workload == "train":
      s = args.train_steps
      jobs.append((f"train-resnet18-{s}steps", "configs/quickstart.py",
                   [f"--config.num_steps={s}",
                    "--config.eval.every_steps=100000",
                    "--config.final_eval.num_examples=100",
                    "--config.final_eval.attack.steps=0",
                    f"--config.checkpoint.every_steps={s}"],
                   ["train", f"--steps={s}"]))
    else:
      raise SystemExit(f"unknown workload {workload!r}")
    for label, config, extra, torch_argv in jobs:
      print(label, flush=True)

      def save(partial: dict[str, Any], label: str = label) -> None:
        result["workloads"][label] = partial
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")

      save(measure(args, label, config, extra, torch_argv, tmp, env, save))
  result["machine_at_end"] = machine()
  Path(out).write_text(json.dumps(result, indent=1) + "\n")
  print(format_table(result))
  print("wrote", out)


def format_table(result: dict[str, Any]) -> str:
  """A markdown table of the medians: one row per workload and side."""
  lines = ["| workload | side | start+imports | data | model | compile | "
           "compute | exit | total | PyTorch / this | CPU s | "
           "PyTorch / this (CPU) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for label, w in result["workloads"].items():
    if w.get("partial"):
      continue
    torch_total = w["median"]["pytorch"]["total"]
    torch_cpu = w["median"]["pytorch"]["cpu"]
    for side in ("pytorch", "robustjax_cold", "robustjax_warm"):
      m = w["median"][side]
      lines.append(
          f"| {label} | {side} | {m['start_imports']:.1f} | {m['data']:.1f} "
          f"| {m['model']:.1f} | {m['compile']:.1f} | {m['compute']:.1f} | "
          f"{m['exit']:.1f} | {m['total']:.1f} | "
          f"{torch_total / m['total']:.2f}x | {m['cpu']:.1f} | "
          f"{torch_cpu / m['cpu']:.2f}x |")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--jax-worker":
    jax_worker(sys.argv[2:])
  else:
    main()
