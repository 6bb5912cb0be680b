"""Compile time and run time of an attack loop as a function of its structure.

  PYTHONPATH=. .venv/bin/python benchmarks/unroll_curve.py
  PYTHONPATH=. .venv/bin/python benchmarks/unroll_curve.py --attacks=pgd \
      --unrolls=1,5,full --reps=2 --batch=100          # a quicker look

One attack on the small CNN (``small_cnn``, width 1: ``--checkpoint``'s
weights and the true labels, or random weights and the network's own
predictions as labels), one batch of CIFAR-10 test images, written as loops of the same per-iteration
step in several structures:

- ``full``: a Python loop, every iteration unrolled into one straight-line
  program (what the library's attacks do today: ``pgd.py``, ``run_steps``);
- ``scan k``: ``jax.lax.scan`` over the iterations with ``unroll=k``
  (k iterations per loop body; ``fori_loop`` with static bounds lowers to
  the same scan).

The attacks:

- ``pgd``: PGD-20, L-inf 8/255, step 2/255, uniform random start, CE. The
  step is written here (sign-gradient ascent, projection onto the ball and
  [0, 1]) as the library's ``projected_gradient_ascent`` does it.
- ``apgd``: APGD-CE, 100 iterations, one restart, rho 0.75, using the
  library's own ``apgd.init_state`` and ``apgd.make_step`` (the step
  function ``step(state, i)`` the library unrolls), so only the loop
  around it differs.

For each structure: seconds to trace and lower (``jit(f).lower``), seconds
for XLA to compile (``.compile()``), and the median seconds of ``--reps``
calls of the compiled program, the structures interleaved with a rotating
order. Every structure's adversarial images must agree with ``full``'s (max
abs difference and the per-point robust flags are recorded). Writes
``benchmarks/results/unroll_curve.json``. Nothing here changes the library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EPS = 8 / 255
STEP = 2 / 255


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--attacks", default="pgd,apgd",
                 help="comma-separated: pgd (PGD-20), apgd (APGD-CE 100)")
  p.add_argument("--unrolls", default="1,2,5,10,full",
                 help="scan unroll factors; 'full' = a Python loop")
  p.add_argument("--batch", type=int, default=500)
  p.add_argument("--apgd-batch", type=int, default=0,
                 help="APGD batch (0 = --batch)")
  p.add_argument("--pgd-steps", type=int, default=20)
  p.add_argument("--apgd-steps", type=int, default=100)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--checkpoint", default="",
                 help="a robustjax small_cnn workdir whose weights to attack "
                 "(default: random weights, the network's own predictions "
                 "as labels)")
  p.add_argument("--ynnpack-convolutions", action="store_true",
                 help="XLA:CPU's default convolution kernels instead of the "
                 "ones launch.py runs with")
  p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                      "unroll_curve.json"))
  return p.parse_args(argv)


def pgd_program(logits_fn: Callable, steps: int, unroll: int | None
                ) -> Callable:
  """``(x, y, key) -> x_adv``: PGD with the given loop structure.

  ``unroll`` None: a Python loop (every iteration in the program); an int:
  ``lax.scan`` with that unroll factor.
  """
  import jax
  import jax.numpy as jnp
  from robustjax.attacks.losses import cross_entropy

  def step(x_adv, x, y):
    g = jax.grad(lambda z: jnp.sum(cross_entropy(logits_fn(z), y)))(x_adv)
    x_new = x_adv + STEP * jnp.sign(g)
    return jnp.clip(x + jnp.clip(x_new - x, -EPS, EPS), 0.0, 1.0)

  def attack(x, y, key):
    delta = jax.random.uniform(key, x.shape, x.dtype, -EPS, EPS)
    x_adv = jnp.clip(x + delta, 0.0, 1.0)
    if unroll is None:
      for _ in range(steps):
        x_adv = step(x_adv, x, y)
    else:
      x_adv, _ = jax.lax.scan(lambda s, _: (step(s, x, y), None), x_adv,
                              None, length=steps, unroll=unroll)
    return x_adv

  return attack


def apgd_program(logits_fn: Callable, steps: int, unroll: int | None
                 ) -> Callable:
  """``(x, y, key) -> x_best_adv``: APGD-CE from the library's step."""
  import jax
  import jax.numpy as jnp
  from robustjax.attacks import apgd, iterative

  fn = lambda z, k: logits_fn(z)  # noqa: E731

  def attack(x, y, key):
    keys = iterative.fold_in_each(iterative.example_keys(key, x.shape[0]), 0)
    state = apgd.init_state(fn, x, y, keys, eps=EPS, norm="linf", loss="ce")
    step = apgd.make_step(fn, x, y, keys, eps=EPS, norm="linf", loss="ce",
                          steps=steps, rho=0.75)
    if unroll is None:
      state = iterative.run_steps(step, state, 0, steps)
    else:
      state, _ = jax.lax.scan(lambda s, i: (step(s, i), None), state,
                              jnp.arange(steps, dtype=jnp.int32),
                              unroll=unroll)
    return state["x_best_adv"]

  return attack


def measure(name: str, build: Callable, logits_fn: Callable, steps: int,
            unrolls: list[int | None], x, y, key, reps: int) -> dict[str, Any]:
  """Lower, compile and time every loop structure of one attack."""
  import jax
  import numpy as np
  rows: dict[str, dict[str, Any]] = {}
  compiled = {}
  for u in unrolls:
    label = "full" if u is None else f"scan{u}"
    fn = jax.jit(build(logits_fn, steps, u))
    t0 = time.perf_counter()
    lowered = fn.lower(x, y, key)
    t1 = time.perf_counter()
    c = lowered.compile()
    t2 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(c(x, y, key)))  # first call
    t3 = time.perf_counter()
    compiled[label] = c
    rows[label] = dict(unroll=("full" if u is None else u),
                       lower_s=t1 - t0, compile_s=t2 - t1,
                       first_call_s=t3 - t2, run_s=[], out=out)
    print(f"{name} {label}: lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s, "
          f"first call {t3 - t2:.2f} s", flush=True)
  labels = list(compiled)
  for r in range(reps):
    k = r % len(labels)
    for label in labels[k:] + labels[:k]:
      t0 = time.perf_counter()
      jax.block_until_ready(compiled[label](x, y, key))
      rows[label]["run_s"].append(time.perf_counter() - t0)
  logits = jax.jit(logits_fn)
  ref = rows.get("full", rows[labels[0]])["out"]
  ref_robust = np.asarray(jnp_argmax(logits(ref))) == np.asarray(y)
  for label, row in rows.items():
    out = row.pop("out")
    robust = np.asarray(jnp_argmax(logits(out))) == np.asarray(y)
    row.update(run_median_s=statistics.median(row["run_s"]),
               max_abs_diff_vs_full=float(np.max(np.abs(out - ref))),
               robust_acc=float(robust.mean()),
               robust_flags_equal_full=bool((robust == ref_robust).all()))
    print(f"{name} {label}: run {row['run_median_s']:.2f} s (median of "
          f"{reps}), robust {row['robust_acc']:.3f}, |diff| vs full "
          f"{row['max_abs_diff_vs_full']:.2e}", flush=True)
  return rows


def jnp_argmax(logits):
  """argmax over classes (a helper so the import stays local)."""
  import jax.numpy as jnp
  return jnp.argmax(logits, axis=-1)


def main(argv: list[str] | None = None) -> None:
  """Runs the measurement and writes the JSON."""
  args = parse_args(argv)
  import jax
  if not args.ynnpack_convolutions:  # what launch.py runs with
    from robustjax import xla_cpu
    xla_cpu.use_xla_convolutions()
  import numpy as np
  from robustjax import models
  from robustjax.data import sources
  sys.path.insert(0, str(ROOT / "benchmarks"))
  from time_to_result import machine

  load_start = os.getloadavg()
  unrolls = [None if u == "full" else int(u)
             for u in args.unrolls.split(",")]
  model = models.create_model("small_cnn", num_classes=10, width=1.0)
  split = sources.load_split("cifar10", "test")
  n_max = max(args.batch, args.apgd_batch)
  images = np.asarray(split.images[:n_max], np.float32) / 255.0
  if args.checkpoint:
    from robustjax import checkpoint
    tree = checkpoint.load(args.checkpoint)
    model = models.build_model(tree["meta"]["model"])
    variables = {"params": tree["params"],
                 "batch_stats": tree["batch_stats"]}
    labels = np.asarray(split.labels[:n_max], np.int32)
  else:
    variables = model.init(jax.random.key(0), images[:1], train=False)
  logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
  if not args.checkpoint:
    labels = np.asarray(jax.jit(logits_fn)(images).argmax(-1), np.int32)
  key = jax.random.key(1)
  results: dict[str, Any] = {}
  for name in args.attacks.split(","):
    if name == "pgd":
      n, steps, build = args.batch, args.pgd_steps, pgd_program
    elif name == "apgd":
      n, steps, build = (args.apgd_batch or args.batch, args.apgd_steps,
                         apgd_program)
    else:
      raise SystemExit(f"unknown attack {name!r}: pgd or apgd")
    x, y = jax.numpy.asarray(images[:n]), jax.numpy.asarray(labels[:n])
    results[name] = dict(steps=steps, batch=n, structures=measure(
        name, build, logits_fn, steps, unrolls, x, y, key, args.reps))
  out = dict(machine=machine(), load_average_at_start=load_start,
             load_average_at_end=os.getloadavg(),
             command=" ".join(["python"] + sys.argv), reps=args.reps,
             model=("small_cnn width 1, " + (args.checkpoint or
                                             "random init")),
             xla_convolutions=not args.ynnpack_convolutions,
             attacks=results)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
  print("wrote", args.out)


if __name__ == "__main__":
  main()
