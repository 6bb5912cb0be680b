"""Weight-space tools: functions of parameter pytrees, never of model classes.

  trees        flatten to ``{"stage2/block1/conv2/kernel": array}``, select by
               pattern or depth, ``check_compatible``
  interpolate  ``(1 - a) * A + a * B`` with per-layer alphas
  batchnorm    the BatchNorm-statistics modes shared by interpolation, RiFT
               and RWS (interpolate, keep, recompute, ...) and re-estimation
  curves       clean / PGD / OOD accuracy and loss along the path; barrier
  arithmetic   task vectors: delta, add, negate, scale, TIES, DARE
  sharpness    layer-wise worst-case sharpness and straggler layers
  streaming    interpolate / add checkpoints on disk, leaf by leaf
  plots        the figures of the ``interpolate`` task and the notebook

Nothing here imports a model class or the trainer: models enter only as
functions (``apply``, a loss, an evaluator). See docs/weight_space.md.
"""

from robustjax.weightspace import (arithmetic, batchnorm, curves, interpolate,
                                   sharpness, streaming, trees)

__all__ = ["arithmetic", "batchnorm", "curves", "interpolate", "sharpness",
           "streaming", "trees"]
