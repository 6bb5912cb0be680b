"""Data: in-memory splits, on-device augmentation, sharded batch pipelines.

  split = load_split('cifar10', 'test')                 # sources.py
  train, val = holdout_split(split, val_size=5000)      # sources.py
  half = class_subset(split, (5, 6, 7, 8, 9))           # labels 0..4
  half = subset(split, "5-9")                            # the same
  x = random_crop_flip(key, batch['image'])             # augment.py (in jit)
  TrainBatches(split, 128, seed, mesh).batch(step)      # pipeline.py
  eval_batches(split, 200, mesh, num_examples=1000)     # pipeline.py
  sum_batches(step, variables, split, mesh, batch_size=200)  # batched.py

The embedded CIFAR-10 copy and its fixed, class-mixed order are described in
``embedded.py``; TFDS loading lives in ``tfds_source.py``.
"""

from robustjax.data.augment import random_crop_flip, to_float
from robustjax.data.batched import (Step, collect_rows, compile_step,
                                    example_keys, map_batches, sum_batches)
from robustjax.data.embedded import CLASS_NAMES
from robustjax.data.pipeline import (TrainBatches, clean_float_batches,
                                     eval_batches)
from robustjax.data.sources import (DATASETS, ArraySplit, DatasetInfo,
                                    class_subset, holdout_split, load_split,
                                    num_classes, parse_classes, subset,
                                    train_val)

__all__ = [
    "ArraySplit", "CLASS_NAMES", "DATASETS", "DatasetInfo", "Step",
    "TrainBatches", "class_subset", "clean_float_batches", "collect_rows",
    "compile_step", "eval_batches", "example_keys", "holdout_split",
    "load_split", "map_batches", "num_classes", "parse_classes",
    "random_crop_flip", "subset", "sum_batches", "to_float", "train_val",
]
