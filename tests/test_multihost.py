"""Multi-host training on one machine: two ``launch.py --distributed``
processes on localhost (2 CPU devices each, gloo collectives) train the
quickstart smoke config with fsdp-sharded parameters, checkpoint, resume, and
match a single-process 4-device dp run of the same config; so does a hybrid
fsdp run (``sharding.fsdp_size=2``: the state split within each process).

It takes 46 s on a quiet 2-core machine (four launches, three of them
2-process jobs; the three-launch version took 28 s quiet, 53-98 s while
other jobs shared the cores). It stays in the default
run because it is the only end-to-end check of the multi-host path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import chex
import jax
import numpy as np

from robustjax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Quickstart smoke: small_cnn width 0.25, global batch 32, 6 FGSM-RS steps,
# checkpoints (and evaluations) at steps 3 and 6. min_size=256 makes fsdp
# shard this tiny model's kernels, so the processes hold different shards.
ARGS = ["--config=configs/quickstart.py:smoke", "--config.progress_bar=false"]
FSDP = ["--config.sharding.strategy=fsdp", "--config.sharding.min_size=256"]
TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir: str, extra: list[str]) -> subprocess.Popen:
  """Starts launch.py; its output goes to a temporary file, not a pipe: an
  unread full pipe would stall one process and, through the collectives,
  the other."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  log = tempfile.TemporaryFile("w+")
  proc = subprocess.Popen(
      [sys.executable, "launch.py", *ARGS, f"--workdir={workdir}", *extra],
      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log = log
  return proc


def _finish(proc: subprocess.Popen) -> str:
  """Waits for ``proc`` and returns its output."""
  proc.wait(timeout=TIMEOUT_S)
  proc.log.seek(0)
  out = proc.log.read()
  proc.log.close()
  return out


def _run_two_processes(workdir: str, extra: tuple[str, ...] = ()
                       ) -> list[str]:
  """Runs process 0 and 1 of a 2-process job; returns their logs."""
  port = _free_port()
  procs = [_launch(workdir, ["--distributed",
                             f"--coordinator_address=localhost:{port}",
                             "--num_processes=2", f"--process_id={i}",
                             "--cpu_devices=2", *FSDP, *extra])
           for i in range(2)]
  logs = []
  try:
    for proc in procs:
      logs.append(_finish(proc))
  finally:
    for proc in procs:  # a failed peer must not leave the other waiting
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for i, (proc, log) in enumerate(zip(procs, logs)):
    assert proc.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
  return logs


def _state(workdir: str, step: int) -> dict:
  tree = checkpoint.load(workdir, step=step, with_opt_state=True)
  return {k: tree[k] for k in ("params", "batch_stats", "opt_state")}


def test_two_processes_train_checkpoint_resume_like_one(tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  # The single-process reference: one process, 4 CPU devices, dp. Same
  # global batch (32) and data order: TrainBatches draws the global indices
  # from (seed, step) and each process keeps its host_rows half, in the
  # order make_array_from_process_local_data lays the halves on the mesh.
  reference = _launch(single, ["--cpu_devices=4"])
  logs = _run_two_processes(multi)
  out = _finish(reference)
  assert reference.returncode == 0, out[-3000:]

  for log in logs:  # both processes ran to the end and agree
    assert "final test:" in log and "report:" in log
  # Only process 0 writes metrics and the report; both processes wrote
  # their shards of each checkpoint, which opens in this (8-device)
  # process with numpy arrays.
  assert os.path.exists(os.path.join(multi, "report.json"))
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3", "6"]

  # Two fsdp processes == one dp process, to float rounding, after 3 steps.
  # (Later steps are not compared to it: FGSM's sign() turns 1e-7
  # differences into different perturbations, about 1% apart by step 6.)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               _state(multi, 3), _state(single, 3))

  # Resume: as if both processes were killed right after the step-3 save.
  cut = str(tmp_path / "cut")
  shutil.copytree(multi, cut)
  for name in ("checkpoints/6", "best", "report.json"):
    path = os.path.join(cut, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  logs = _run_two_processes(cut)
  assert all("resumed from step 3" in log for log in logs)
  chex.assert_trees_all_equal(_state(cut, 6), _state(multi, 6))

  # Hybrid fsdp across the two processes: a replica (2) x data (2) mesh,
  # the state split within each process's 2 devices and replicated across
  # the processes. The same training as the dp reference.
  hybrid = str(tmp_path / "hybrid")
  _run_two_processes(hybrid, ("--config.sharding.fsdp_size=2",))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               _state(hybrid, 3), _state(single, 3))
