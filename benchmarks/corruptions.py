r"""How fast the CIFAR-10-C set is generated: robustjax (JAX) against the
reference approach (numpy / scipy / PIL, one image at a time) on this CPU.

  .venv/bin/python benchmarks/corruptions.py                 # full: 19 x 5 x 10,000 (JAX)
  .venv/bin/python benchmarks/corruptions.py --num_images=1000 --ref_images=50 --reps=1  # quick

For every corruption and severity, robustjax corrupts ``--num_images`` test
images in chunks of 1,000 (``data.corrupted.corrupt_images``: per-image keys,
host -> device -> host, uint8 out) and the reference corrupts ``--ref_images``
of them with ``tests/cifar_c_reference.py`` (make_cifar_c.py's maths with
numpy's generator; stand-ins where ImageMagick / OpenCV / the frost photos
would be needed, doing the same kind of work). Both are timed ``--reps``
times, the median is kept, and images/s are extrapolated to the full
10,000 x 19 x 5 = 950,000 images. JAX compile time (the first chunk of each
corruption and severity) is reported separately. JAX uses every core XLA
sees; the reference runs in one Python process as make_cifar_c.py does.
Writes ``benchmarks/results/corruptions.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from absl import app, flags  # noqa: E402

_NUM = flags.DEFINE_integer("num_images", 10_000, "Images per corruption and "
                            "severity for JAX.")
_REF = flags.DEFINE_integer("ref_images", 200, "Images per corruption and "
                            "severity for the numpy reference.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions (median kept).")
_ONLY = flags.DEFINE_list("corruptions", [], "Subset (default all 19).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/corruptions.json",
                           "Result file.")

TOTAL = 10_000


def main(argv: list[str]) -> None:
  del argv
  import jax
  import numpy as np

  import cifar_c_reference as ref
  from robustjax import data
  from robustjax.data import corrupted, corruptions

  names = tuple(_ONLY.value) or corruptions.CORRUPTIONS
  split = data.load_split("cifar10", "test")
  images = split.images[:_NUM.value]
  ref_images = split.images[:_REF.value]
  rows = []
  t_start = time.time()
  for name in names:
    for severity in corruptions.SEVERITIES:
      t0 = time.perf_counter()
      corrupted.corrupt_images(images[:1000], np.arange(1000), name, severity)
      first_chunk = time.perf_counter() - t0
      jax_times = []
      for rep in range(_REPS.value):
        t0 = time.perf_counter()
        corrupted.corrupt_images(images, np.arange(len(images)), name,
                                 severity, seed=rep)
        jax_times.append(time.perf_counter() - t0)
      ref_times = []
      for rep in range(_REPS.value):
        rng = np.random.default_rng(rep)
        t0 = time.perf_counter()
        for x in ref_images:
          ref.numpy_corrupt(name, x, severity, rng)
        ref_times.append(time.perf_counter() - t0)
      jax_ips = len(images) / statistics.median(jax_times)
      ref_ips = len(ref_images) / statistics.median(ref_times)
      rows.append({"corruption": name, "severity": severity,
                   "jax_images_per_s": round(jax_ips, 1),
                   "ref_images_per_s": round(ref_ips, 1),
                   "ratio": round(jax_ips / ref_ips, 2),
                   "jax_first_chunk_s": round(first_chunk, 2)})
      print(f"{name:18s} s{severity}  jax {jax_ips:8.0f} img/s  ref "
            f"{ref_ips:7.0f} img/s  x{jax_ips / ref_ips:6.1f}  (first chunk "
            f"{first_chunk:.1f} s)", flush=True)

  jax_s = sum(TOTAL / r["jax_images_per_s"] for r in rows)
  ref_s = sum(TOTAL / r["ref_images_per_s"] for r in rows)
  compile_s = sum(r["jax_first_chunk_s"] for r in rows)
  per_corruption = {}
  for name in names:
    sub = [r for r in rows if r["corruption"] == name]
    per_corruption[name] = {
        "jax_s": round(sum(TOTAL / r["jax_images_per_s"] for r in sub), 1),
        "ref_s": round(sum(TOTAL / r["ref_images_per_s"] for r in sub), 1)}
  summary = {
      "what": f"{len(names)} corruptions x 5 severities x {TOTAL} images "
              "(extrapolated from the measured rates)",
      "jax_total_s": round(jax_s, 1),
      "jax_compile_s_upper_bound": round(compile_s, 1),
      "ref_total_s": round(ref_s, 1),
      "ratio_ref_over_jax": round(ref_s / jax_s, 2),
      "measured": {"jax_images": len(images), "ref_images": len(ref_images),
                   "reps": _REPS.value, "statistic": "median"},
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "jax": jax.__version__, "devices": str(jax.devices())},
      "wall_s": round(time.time() - t_start, 1),
  }
  print(json.dumps(summary, indent=1))
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"summary": summary, "per_corruption": per_corruption,
               "rows": rows}, f, indent=1)
  print("wrote", _OUT.value)


if __name__ == "__main__":
  app.run(main)
