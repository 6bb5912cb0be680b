"""The ``train`` task: ``training.train_and_evaluate`` (configs/at.py,
configs/quickstart.py)."""

from __future__ import annotations

from typing import Any


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Trains and evaluates; see ``robustjax.training.loop``."""
  from robustjax.training import loop  # local: heavy import
  return loop.train_and_evaluate(config, workdir)
