"""Benchmark scripts' CPU-testable paths (benchmarks/gpu.py, input_pipeline.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu.py"


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # conftest's 8 fake devices are not wanted here
  return subprocess.run([sys.executable, str(GPU), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_gpu_script_fails_in_one_line_without_a_gpu():
  res = _run("--no-torch", timeout=300)
  assert res.returncode == 2, res.stderr
  lines = [l for l in res.stderr.splitlines() if l.startswith("gpu.py:")]
  assert len(lines) == 1 and "no GPU" in lines[0], res.stderr
  assert "--cpu-dry-run" in lines[0]


@pytest.mark.slow
def test_gpu_script_cpu_dry_run_end_to_end(tmp_path):
  """Both models, both sides, the table and the JSON at toy sizes."""
  pytest.importorskip("torch")
  out = tmp_path / "gpu.json"
  res = _run("--cpu-dry-run", "--cache-dir=", f"--out={out}", timeout=900)
  assert res.returncode == 0, res.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["cpu_dry_run"] and len(report["results"]) == 2
  for row in report["results"]:
    assert row["jax"]["flops_per_step"] > 0 and row["jax_images_per_s"] > 0
    # The twin has the same parameter count (gpu.py exits 2 otherwise).
    assert row["torch"]["params"] == row["jax"]["params"]
    assert row["torch_images_per_s"] > 0


@pytest.mark.slow
def test_input_pipeline_script_end_to_end(tmp_path):
  """benchmarks/input_pipeline.py at toy length: three timings and the JSON."""
  out = tmp_path / "input_pipeline.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  res = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"),
       "--steps=2", "--rounds=2", f"--out={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  report = json.loads(out.read_text())
  med = report["median_s"]
  assert set(med) == {"pipeline_alone", "step_alone", "fed"}
  # Gathering 128 uint8 images is far cheaper than a training step.
  assert 0 < med["pipeline_alone"] < med["step_alone"]
  assert report["pipeline_headroom"] > 1
