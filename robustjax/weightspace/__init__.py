"""Weight-space tools: functions of parameter pytrees, never of model classes.

  trees        flatten to ``{"stage2/block1/conv2/kernel": array}``, select by
               pattern or depth, ``check_compatible``
  interpolate  ``(1 - a) * A + a * B`` with per-layer alphas; BatchNorm
               statistics interpolated, kept or re-estimated
  curves       clean / PGD / OOD accuracy and loss along the path; barrier
  arithmetic   task vectors: delta, add, negate, scale, TIES, DARE
  sharpness    layer-wise worst-case sharpness and straggler layers
  streaming    interpolate / add checkpoints on disk, leaf by leaf
  plots        the figures of the ``interpolate`` task and the notebook
  task         the ``interpolate`` task behind ``launch.py``

See docs/weight_space.md.
"""

from robustjax.weightspace import (arithmetic, curves, interpolate,
                                   sharpness, streaming, trees)

__all__ = ["arithmetic", "curves", "interpolate", "sharpness", "streaming",
           "trees"]
