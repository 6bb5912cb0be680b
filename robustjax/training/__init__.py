"""Training: objectives, optimizer, the compiled step and the loop."""

from robustjax.training.loop import train_and_evaluate
from robustjax.training.objectives import OBJECTIVES, make_objective
from robustjax.training.step import TrainState, make_train_step

__all__ = ["train_and_evaluate", "OBJECTIVES", "make_objective", "TrainState",
           "make_train_step"]
