r"""One CIFAR-10 test image under every corruption and severity, as a PNG grid.

  .venv/bin/python experiments/corruption_grid.py --index=7 \
      --out=experiments/results/corruption_grid.png

Rows are the 19 corruptions in CIFAR-10-C's file order (the 15 benchmark
ones, then speckle_noise, gaussian_blur, spatter, saturate); columns are the
clean image and severities 1-5. Images are stored as CIFAR-10-C stores them
(uint8, truncated) and drawn 4x enlarged with nearest-neighbour pixels, so
what you see is what a model sees. Takes about a minute on 2 CPU cores
(mostly compilation).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_INDEX = flags.DEFINE_integer("index", 7, "Which embedded test image.")
_SEED = flags.DEFINE_integer("seed", 0, "Corruption seed.")
_OUT = flags.DEFINE_string("out", "experiments/results/corruption_grid.png",
                           "Where the PNG goes.")


def main(argv: list[str]) -> None:
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from robustjax import data
  from robustjax.data import corrupted, corruptions

  split = data.load_split("cifar10", "test")
  image = split.images[_INDEX.value:_INDEX.value + 1]
  rows = []
  for name in corruptions.CORRUPTIONS:
    row = [image[0]]
    for severity in corruptions.SEVERITIES:
      row.append(corrupted.corrupt_images(
          image, np.array([_INDEX.value]), name, severity, _SEED.value)[0])
    rows.append(row)

  n_rows, n_cols = len(rows), 6
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 1.1 + 1.6,
                                                     n_rows * 1.1))
  for r, (name, row) in enumerate(zip(corruptions.CORRUPTIONS, rows)):
    for c, img in enumerate(row):
      ax = axes[r, c]
      ax.imshow(img, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title("clean" if c == 0 else f"severity {c}", fontsize=8)
      if c == 0:
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
  label = data.CLASS_NAMES[int(split.labels[_INDEX.value])]
  fig.suptitle(f"CIFAR-10 test image {_INDEX.value} ({label}) under the 19 "
               "CIFAR-10-C corruptions (robustjax)", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.98))
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  fig.savefig(_OUT.value, dpi=110)
  print("wrote", _OUT.value)


if __name__ == "__main__":
  app.run(main)
