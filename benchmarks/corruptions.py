r"""How fast the CIFAR-10-C set is generated: robustjax (JAX) against the
reference approach (numpy / scipy / PIL, one image at a time) on this CPU.

  .venv/bin/python benchmarks/corruptions.py                 # full: 19 x 5 x 10,000 (JAX)
  .venv/bin/python benchmarks/corruptions.py --num_images=1000 --ref_images=50 --reps=1  # quick
  .venv/bin/python benchmarks/corruptions.py --agreement   # agreement with the reference maths

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

``--agreement`` measures accuracy instead of speed: for the corruptions whose
maths ``tests/cifar_c_reference.py`` transcribes (and mud spatter, severities
4-5), the first ``--agreement_images`` test images are corrupted by robustjax
(image i with key ``split(key(42), B)[i]``) and by the reference given the
same random draws, at every severity. It reports the mean and max absolute
difference in uint8 levels before the final uint8 cast, and the fraction of
uint8 values that differ after it (robustjax's ``to_uint8`` against the
reference's ``np.uint8(x * 255)`` in float64). Writes
``benchmarks/results/corruption_agreement.json``.
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
_AGREEMENT = flags.DEFINE_bool("agreement", False, "Measure the agreement "
                               "with the reference maths instead of speed.")
_AGREE_N = flags.DEFINE_integer("agreement_images", 16, "Test images for "
                                "--agreement.")
_AGREE_OUT = flags.DEFINE_string(
    "agreement_out", "benchmarks/results/corruption_agreement.json",
    "Result file of --agreement.")

TOTAL = 10_000


def agreement() -> None:
  """Gap to the reference maths, per corruption and severity (see the module
  docstring)."""
  import jax
  import numpy as np

  from cifar_c_reference import reference
  from robustjax import data
  from robustjax.data import corruptions
  from robustjax.data.corruptions import blur, digital, weather

  draw_fns = {
      "glass_blur": blur.glass_draws, "motion_blur": blur.motion_draws,
      "fog": lambda k, shape, s: weather.plasma_draws(k, 32),
      "snow": weather.snow_draws, "spatter": weather.spatter_draws,
      "elastic_transform": digital.elastic_draws}
  matched = ("gaussian_blur", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "fog", "brightness", "contrast",
             "elastic_transform", "pixelate", "jpeg_compression", "saturate")
  cases = [(n, s) for n in matched for s in corruptions.SEVERITIES]
  cases += [("spatter", 4), ("spatter", 5)]
  if _ONLY.value:
    cases = [c for c in cases if c[0] in _ONLY.value]
  key = jax.random.key(42)
  levels = data.load_split("cifar10", "test").images[:_AGREE_N.value]
  images = levels.astype(np.float32) / 255.0
  keys = jax.random.split(key, len(images))
  rows = []
  for name, severity in cases:
    ours = corruptions.apply(name, key, images, severity)
    ours_u8 = np.asarray(corruptions.to_uint8(ours))
    ours = np.asarray(ours, np.float64)
    ref = []
    for i, x in enumerate(images):
      draws = None
      if name in draw_fns:
        draws = jax.tree.map(np.asarray,
                             draw_fns[name](keys[i], x.shape, severity))
      # make_cifar_c.py's input: np.array(pil_image) / 255. in float64.
      ref.append(reference(name, levels[i] / 255.0, severity, draws))
    ref = np.stack(ref)
    ref_u8 = np.uint8(np.clip(ref, 0, 1) * 255)
    gap = np.abs(ours - ref) * 255
    rows.append({"corruption": name, "severity": severity,
                 "mean_levels": float(gap.mean()),
                 "max_levels": float(gap.max()),
                 "uint8_differ": float(np.mean(ours_u8 != ref_u8))})
    print(f"{name:18s} s{severity}  mean {gap.mean():.4f}  max "
          f"{gap.max():.3f} levels  uint8 differ "
          f"{100 * rows[-1]['uint8_differ']:.3f}%", flush=True)
  result = {
      "what": "robustjax vs tests/cifar_c_reference.py given the same draws, "
              f"first {len(images)} CIFAR-10 test images; gaps in uint8 "
              "levels before the uint8 cast, uint8_differ after it",
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "jax": jax.__version__},
      "rows": rows}
  os.makedirs(os.path.dirname(_AGREE_OUT.value) or ".", exist_ok=True)
  with open(_AGREE_OUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print("wrote", _AGREE_OUT.value)


def main(argv: list[str]) -> None:
  del argv
  if _AGREEMENT.value:
    agreement()
    return
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
