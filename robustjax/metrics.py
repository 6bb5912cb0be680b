"""Metric logging: ``metrics.jsonl`` and TensorBoard event files in a workdir.

Only process 0 writes, so a multi-host run produces one copy. Every record is
one JSON object with at least ``step``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
  value = np.asarray(value).item() if np.ndim(value) == 0 else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN; keep it visible, not silently null
  return value


class MetricWriter:
  """Appends metric records to ``WORKDIR/metrics.jsonl`` and TensorBoard."""

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self._active = jax.process_index() == 0
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # local: slow import
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    """Drops records a killed run logged after its last checkpoint, so a
    resumed run's log reads as one uninterrupted run."""
    if not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f
              if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self._path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self._active:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of ``WORKDIR/metrics.jsonl``, in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_report(workdir: str, report: Mapping[str, Any]) -> str:
  """Writes ``WORKDIR/report.json`` atomically (process 0 only)."""
  path = os.path.join(workdir, "report.json")
  if jax.process_index() != 0:
    return path
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({k: _plain(v) for k, v in report.items()}, f, indent=2,
              sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path


def write_points(workdir: str, points: list[Mapping[str, Any]]) -> None:
  """Logs a curve (one dict per point, e.g. per alpha) as steps 0, 1, ...

  Only the numeric values of each point go to metrics.jsonl / TensorBoard.
  """
  writer = MetricWriter(workdir)
  for i, point in enumerate(points):
    writer.write(i, {k: v for k, v in point.items()
                     if isinstance(v, (int, float))})
  writer.close()
