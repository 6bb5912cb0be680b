"""Training: objectives, optimizer, the compiled step and the loop.

``train_and_evaluate`` (``loop.py``) is imported on first use, so reading
the objective registry (as config files do) stays light.
"""

from typing import Any

from robustjax.training.objectives import (available_objectives,
                                           make_objective, register)
from robustjax.training.step import TrainState, make_train_step

__all__ = ["train_and_evaluate", "available_objectives", "make_objective",
           "register", "TrainState", "make_train_step"]


def __getattr__(name: str) -> Any:
  if name == "train_and_evaluate":
    from robustjax.training.loop import train_and_evaluate
    return train_and_evaluate
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
