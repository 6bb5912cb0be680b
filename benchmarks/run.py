"""robustjax vs a PyTorch eager reference, side by side in one process.

Workloads (same network, same batch, same attack on both sides; details and
the exact definitions in benchmarks/README.md):

  standard_step   one clean CE training step (train-mode BN, SGD).
  pgd10_at_step   one Madry PGD-AT step: Linf PGD-10 (eps 8/255, step 2/255,
                  uniform random start, CE) with BN in eval mode, then CE on
                  the adversarial batch in train mode and one SGD step.
  trades_step     one TRADES step (beta 6): KL-PGD-10 from x + 0.001 N(0, I)
                  in eval mode, then CE(x) + 6 KL(f(x) || f(x_adv)) in train
                  mode and one SGD step.
  pgd20_eval      clean + PGD-20 accuracy of one batch.
  apgd_ce_eval    clean + APGD-CE accuracy of one batch, --apgd-steps (20)
                  iterations, one restart; PyTorch side = torchattacks.APGD.
  interp_eval     for each alpha in --alphas: interpolate two checkpoints'
                  weights and BN statistics, then clean accuracy of one batch.

JAX runs the library's own code (training.step.make_train_step with the
named objective, evaluation.make_eval_step, attacks.apgd,
weightspace.interpolate_variables). The PyTorch twins are in
torch_reference.py; --check (on by default) verifies that both sides compute
the same logits, attacks and losses before anything is timed.

Per workload the table gives images/s of both sides (medians of interleaved
repetitions; the ratio is the median of per-repetition ratios), FLOPs per
call (XLA cost analysis of the compiled JAX program, used for both sides:
the same work), the achieved FLOP/s as a fraction of this machine's peak
(the faster of a large f32 matmul in JAX and in PyTorch), and peak memory
(JAX: the compiled program's memory analysis; PyTorch: resident-set growth
of a separate process running the same step; see the README).

Model: robustjax's CIFAR ResNet-18 at --width (0.25: channels 16/32/64/128),
32x32x3 uint8 inputs, 10 classes; the PyTorch model gets the JAX weights.

Threads: both libraries use --threads threads: the process's CPU affinity is
limited to that many CPUs (XLA:CPU sizes its thread pool from the affinity
mask) and torch.set_num_threads(--threads). OMP_WAIT_POLICY=PASSIVE by
default (--omp-wait-policy): with libgomp's default spin-waiting, PyTorch ran
10x slower whenever other processes competed for the cores. JAX also runs
with the host split into --jax-devices CPU devices (default: --threads), the
batch sharded across them.

Usage:
  .venv/bin/python benchmarks/run.py                      # every workload
  .venv/bin/python benchmarks/run.py --workloads=pgd10_at_step --reps=20
Writes benchmarks/results/harness.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_io import utc_now, write_json  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

EPS, STEP = 8 / 255, 2 / 255
TRADES_BETA = 6.0

# name -> kind: "train" workloads use --batch/--reps, "eval" ones
# --eval-batch/--eval-reps. Order = the table's order.
WORKLOADS = {"standard_step": "train", "pgd10_at_step": "train",
             "trades_step": "train", "pgd20_eval": "eval",
             "apgd_ce_eval": "eval", "interp_eval": "eval"}
# Names of the first version of this script.
ALIASES = {"train": "pgd10_at_step", "eval": "pgd20_eval"}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--width", type=float, default=0.25,
                 help="ResNet-18 width multiplier (default 0.25)")
  p.add_argument("--batch", type=int, default=128,
                 help="batch of the training steps (default 128)")
  p.add_argument("--eval-batch", type=int, default=500,
                 help="batch of the evaluations (default 500)")
  p.add_argument("--reps", type=int, default=10,
                 help="timed repetitions of each training step (default 10)")
  p.add_argument("--eval-reps", type=int, default=5,
                 help="timed repetitions of each evaluation (default 5)")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed calls per side before timing (default 2; "
                      "evaluations use at most 1)")
  p.add_argument("--apgd-steps", type=int, default=20,
                 help="APGD-CE iterations (default 20; AutoAttack uses 100)")
  p.add_argument("--alphas", default="0,0.25,0.5,0.75,1",
                 help="interpolation coefficients of interp_eval")
  p.add_argument("--threads", type=int, default=None,
                 help="threads for both libraries (default: all CPUs this "
                      "process may use)")
  p.add_argument("--jax-devices", type=int, default=None,
                 help="also time JAX with the host split into this many CPU "
                      "devices, the batch sharded across them (default: "
                      "--threads; 1 times the single-device step only)")
  p.add_argument("--workloads", default=",".join(WORKLOADS),
                 help="comma list of: " + ", ".join(WORKLOADS)
                 + " (default all; 'train' and 'eval' mean pgd10_at_step "
                   "and pgd20_eval)")
  p.add_argument("--layouts", default="nchw,channels_last",
                 help="PyTorch memory formats to time (default both)")
  p.add_argument("--omp-wait-policy", default="PASSIVE",
                 help="OMP_WAIT_POLICY for PyTorch's OpenMP threads, set before "
                      "torch is imported unless the environment already sets "
                      "it (default PASSIVE; 'default' leaves libgomp's own "
                      "spin-waiting, which is ~10x slower on a loaded machine)")
  p.add_argument("--no-check", dest="check", action="store_false",
                 help="skip the JAX/PyTorch equivalence checks")
  p.add_argument("--no-memory", dest="memory", action="store_false",
                 help="skip the PyTorch peak-memory subprocesses")
  p.add_argument("--matmul-n", type=int, default=2048,
                 help="size of the square f32 matmul that measures the "
                      "machine's peak FLOP/s (default 2048)")
  p.add_argument("--cache-dir", default="",
                 help="JAX persistent compilation cache directory (default "
                      "off, so the compile column is a cold compile); a "
                      "rerun with the same directory loads the compiled "
                      "steps instead of compiling them")
  p.add_argument("--ynnpack-convolutions", action="store_true",
                 help="let XLA:CPU run convolutions with YNNPACK (XLA's "
                      "default) instead of its own kernels (robustjax's "
                      "default, robustjax/xla_cpu.py), as launch.py's "
                      "--ynnpack_convolutions does")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=str(HERE / "results" / "harness.json"),
                 help="JSON output path")
  # Internal: the PyTorch peak-memory probe runs as a child process.
  p.add_argument("--torch-memory-probe", default=None, help=argparse.SUPPRESS)
  p.add_argument("--probe-layout", default="channels_last",
                 help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  names = [ALIASES.get(w.strip(), w.strip())
           for w in args.workloads.split(",") if w.strip()]
  bad = set(names) - set(WORKLOADS)
  if bad:
    p.error(f"unknown workloads {sorted(bad)}; choose from "
            f"{', '.join(WORKLOADS)}")
  args.workloads = [w for w in WORKLOADS if w in names]
  args.layouts = [w.strip() for w in args.layouts.split(",") if w.strip()]
  if set(args.layouts) - {"nchw", "channels_last"} or not args.layouts:
    p.error("--layouts takes nchw and/or channels_last")
  try:
    args.alphas = tuple(float(a) for a in args.alphas.split(","))
  except ValueError:
    p.error(f"--alphas must be a comma list of numbers, got {args.alphas!r}")
  if args.apgd_steps < 1:
    p.error("--apgd-steps must be >= 1")
  return args


def limit_threads(threads: int | None) -> tuple[int, list[int]]:
  """Pins the process to ``threads`` CPUs; must run before jax/torch import."""
  allowed = sorted(os.sched_getaffinity(0))
  if threads is None:
    threads = len(allowed)
  if threads < 1:
    raise SystemExit("--threads must be >= 1")
  if threads > len(allowed):
    print(f"warning: --threads={threads} > {len(allowed)} usable CPUs; "
          "threads will share cores", file=sys.stderr)
  else:
    os.sched_setaffinity(0, allowed[:threads])
  return threads, sorted(os.sched_getaffinity(0))


def median(xs):
  return statistics.median(xs)


def time_interleaved(fns: dict, reps: int, warmup: int) -> dict:
  """Seconds per call of each fn, interleaved, order rotated per repetition."""
  names = list(fns)
  for _ in range(warmup):
    for n in names:
      fns[n]()
  times = {n: [] for n in names}
  for r in range(reps):
    k = r % len(names)
    for n in names[k:] + names[:k]:
      t0 = time.perf_counter()
      fns[n]()
      times[n].append(time.perf_counter() - t0)
  return times


def machine_info(threads: int, affinity: list[int]) -> dict:
  import jax
  import jaxlib
  import flax
  import numpy as np
  import optax
  import torch
  cpu_model = ""
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True,
                            timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  return {
      "date": utc_now(),
      "command": " ".join([Path(sys.executable).name] + sys.argv),
      "git_commit": commit,
      "platform": platform.platform(),
      "python": platform.python_version(),
      "cpu_model": cpu_model,
      "cpu_count": os.cpu_count(),
      "cpu_affinity": affinity,
      "load_average_at_start": os.getloadavg(),
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "flax": flax.__version__, "optax": optax.__version__,
                   "numpy": np.__version__, "torch": torch.__version__},
      "threads": {
          "requested": threads,
          "jax": ("XLA:CPU intra-op pool sized from the CPU affinity mask "
                  f"({len(affinity)} CPUs)"),
          "torch_intra_op": torch.get_num_threads(),
          "torch_interop": torch.get_num_interop_threads(),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
          "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
      },
      "jax_devices": [str(d) for d in jax.devices()],
      "torch_mkldnn_enabled": torch.backends.mkldnn.enabled,
      "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
  }


# ---------------------------------------------------------------------------
# The JAX side: the library's own step functions.


def jax_setup(width: float, seed: int):
  import jax
  import ml_collections
  from robustjax import models
  from robustjax.training import optimizer
  from robustjax.training import step as train_step
  model = models.create_model("resnet18", num_classes=10, width=width)
  opt_cfg = ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
      weight_decay_on="all", schedule="constant", boundaries=(), decay=0.1,
      warmup_steps=0, peak_fraction=0.4))
  tx, schedule = optimizer.make_optimizer(opt_cfg, total_steps=100_000)
  state = jax.device_get(
      train_step.init_state(model, tx, jax.random.key(seed), (32, 32, 3)))
  # A second, independently initialised network: the other endpoint of the
  # interpolation workload.
  state_b = jax.device_get(
      train_step.init_state(model, tx, jax.random.key(seed + 1), (32, 32, 3)))
  return dict(model=model, tx=tx, schedule=schedule, state=state,
              variables_b={"params": state_b.params,
                           "batch_stats": state_b.batch_stats})


def make_objective(model, name: str, steps: int = 10):
  """The library's objective ``name`` with the benchmark's attack settings."""
  from robustjax.training import objectives
  return objectives.make_objective(objectives.reference_params(
      name, eps=EPS, step_size=STEP, steps=steps, beta=TRADES_BETA), model)


def jax_meshes(num_devices: int) -> dict:
  """``{"jax": 1-device mesh, "jax_<n>dev": n-device mesh}``: the second
  splits the batch over n CPU devices (data parallelism across cores)."""
  from robustjax import sharding
  meshes = {"jax": sharding.make_mesh(1)}
  if num_devices > 1:
    meshes[f"jax_{num_devices}dev"] = sharding.make_mesh(num_devices)
  return meshes


def make_batch(batch: int, seed: int):
  import numpy as np
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (batch,)).astype(np.int32)}


def compile_timed(jitted, *args):
  """Ahead-of-time compile of a jitted step: ``(compiled, seconds)``."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def compiled_cost(compiled) -> dict:
  """FLOPs (XLA's cost analysis) and bytes (XLA's memory analysis) of one
  call of a compiled program, per device.

  Memory = arguments + outputs - aliased (donated) + temporaries: the bytes
  the program needs live at once, weights, optimizer state and inputs
  included.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes
           - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  return {"flops": float(cost.get("flops", 0.0)), "memory_bytes": int(total),
          "memory_detail": {"arguments": mem.argument_size_in_bytes,
                            "outputs": mem.output_size_in_bytes,
                            "aliased": mem.alias_size_in_bytes,
                            "temporaries": mem.temp_size_in_bytes}}


class JaxRunner:
  """A compiled JAX workload: ``__call__`` runs one call and blocks.

  Subclasses set ``compiled``, ``compile_s``, ``num_devices`` and may scale
  ``cost()`` for several program calls per workload call.
  """
  compiled = None
  compile_s = 0.0
  num_devices = 1
  metrics = None

  def cost(self) -> dict:
    return compiled_cost(self.compiled)


class JaxTrain(JaxRunner):
  """The library's train step (``make_train_step``) with objective
  ``objective_name``; the step donates its state, which we keep."""

  def __init__(self, setup, batch_np, seed, mesh, objective_name="pgd_at"):
    import jax
    from robustjax import sharding
    from robustjax.training import step as train_step
    # A fresh copy: the step donates (deletes) its input state.
    self.state = sharding.put_replicated(jax.device_get(setup["state"]), mesh)
    self.batch = sharding.put_global_batch(batch_np, mesh)
    self.key = sharding.put_replicated(jax.random.key(seed + 1), mesh)
    objective = make_objective(setup["model"], objective_name)
    step = train_step.make_train_step(objective, setup["tx"],
                                      setup["schedule"], mesh, augment=False)
    self.compiled, self.compile_s = compile_timed(
        step, self.state, self.batch, self.key)
    self.num_devices = mesh.devices.size

  def __call__(self):
    import jax
    self.state, self.metrics = self.compiled(self.state, self.batch, self.key)
    jax.block_until_ready(self.state)


def eval_batch(batch_np, mesh):
  """The evaluation batch layout: image, label, mask, index; sharded."""
  import numpy as np
  from robustjax import sharding
  n = len(batch_np["label"])
  return sharding.put_global_batch(
      dict(batch_np, mask=np.ones(n, bool), index=np.arange(n, dtype=np.int32)),
      mesh)


class JaxEval(JaxRunner):
  """``evaluation.make_eval_step``: clean + PGD-``steps`` accuracy."""

  def __init__(self, setup, batch_np, seed, mesh, steps=20):
    import jax
    from robustjax import attacks, evaluation, sharding
    attack = attacks.build(name="pgd", eps=EPS, step_size=STEP, steps=steps)
    st = setup["state"]
    self.variables = sharding.put_replicated(
        {"params": st.params, "batch_stats": st.batch_stats}, mesh)
    self.batch = eval_batch(batch_np, mesh)
    self.key = sharding.put_replicated(jax.random.key(seed + 2), mesh)
    # One program (chunk_size=0), so that XLA's cost analysis counts one
    # call's FLOPs; the chunked form's speed is chunked_eval.py's subject.
    step = evaluation.make_eval_step(setup["model"], attack, mesh,
                                     chunk_size=0)
    self.compiled, self.compile_s = compile_timed(
        step, self.variables, self.batch, self.key)
    self.num_devices = mesh.devices.size

  def __call__(self):
    import jax
    self.metrics = jax.block_until_ready(
        self.compiled(self.variables, self.batch, self.key))


def make_apgd_eval_step(model, steps: int, mesh):
  """Jitted ``(variables, batch, key) -> {clean, adv}`` counts with
  ``attacks.apgd`` (APGD-CE, Linf eps 8/255, one restart, per-example keys
  as in the library's AutoAttack)."""
  import jax
  import jax.numpy as jnp
  from robustjax import data, sharding
  from robustjax.attacks import apgd as apgd_lib

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    y = batch["label"]
    logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
    clean_ok = jnp.argmax(logits_fn(x), -1) == y
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch["index"])
    _, robust = apgd_lib.apgd(logits_fn, x, y, key=keys, eps=EPS,
                              norm="linf", steps=steps, loss="ce")
    return {"clean": jnp.sum(clean_ok), "adv": jnp.sum(robust & clean_ok)}

  return jax.jit(step, in_shardings=(sharding.replicated(mesh),
                                     sharding.batch_sharded(mesh),
                                     sharding.replicated(mesh)),
                 out_shardings=sharding.replicated(mesh))


class JaxAPGD(JaxRunner):
  def __init__(self, setup, batch_np, seed, mesh, steps=20):
    import jax
    from robustjax import sharding
    st = setup["state"]
    self.variables = sharding.put_replicated(
        {"params": st.params, "batch_stats": st.batch_stats}, mesh)
    self.batch = eval_batch(batch_np, mesh)
    self.key = sharding.put_replicated(jax.random.key(seed + 3), mesh)
    step = make_apgd_eval_step(setup["model"], steps, mesh)
    self.compiled, self.compile_s = compile_timed(
        step, self.variables, self.batch, self.key)
    self.num_devices = mesh.devices.size

  def __call__(self):
    import jax
    self.metrics = jax.block_until_ready(
        self.compiled(self.variables, self.batch, self.key))


def make_clean_eval_step(model, mesh):
  """Jitted ``(variables, batch) -> correct count`` (eval-mode BN)."""
  import jax
  import jax.numpy as jnp
  from robustjax import data, sharding

  def step(variables, batch):
    logits = model.apply(variables, data.to_float(batch["image"]),
                         train=False)
    return jnp.sum(jnp.argmax(logits, -1) == batch["label"])

  return jax.jit(step, in_shardings=(sharding.replicated(mesh),
                                     sharding.batch_sharded(mesh)),
                 out_shardings=sharding.replicated(mesh))


class JaxInterp(JaxRunner):
  """Per alpha: ``weightspace.interpolate_variables`` (weights and BN
  statistics lerped, one compiled lerp for every alpha) and a compiled
  clean-accuracy forward; one call covers every alpha."""

  def __init__(self, setup, batch_np, seed, mesh, alphas=(0.0, 0.5, 1.0)):
    del seed
    import jax
    from robustjax import sharding
    st = setup["state"]
    self.va = sharding.put_replicated(
        {"params": st.params, "batch_stats": st.batch_stats}, mesh)
    self.vb = sharding.put_replicated(setup["variables_b"], mesh)
    self.alphas = tuple(alphas)
    self.batch = sharding.put_global_batch(batch_np, mesh)
    step = make_clean_eval_step(setup["model"], mesh)
    t0 = time.perf_counter()
    self._interp(self.alphas[0])  # compiles the lerp (once for all alphas)
    lerp_s = time.perf_counter() - t0
    self.compiled, eval_s = compile_timed(step, self.va, self.batch)
    self.compile_s = lerp_s + eval_s
    self.num_devices = mesh.devices.size
    self.num_floats = sum(int(x.size) for x in jax.tree.leaves(self.va))

  def _interp(self, alpha):
    from robustjax.weightspace import interpolate
    return interpolate.interpolate_variables(self.va, self.vb, alpha)

  def __call__(self):
    import jax
    self.metrics = jax.block_until_ready(
        [self.compiled(self._interp(a), self.batch) for a in self.alphas])

  def cost(self) -> dict:
    """The forward's cost per alpha plus the lerps' 3 FLOPs per weight;
    memory of one forward (its arguments are one interpolated network)."""
    out = compiled_cost(self.compiled)
    out["flops"] = len(self.alphas) * (out["flops"] + 3 * self.num_floats)
    return out


# ---------------------------------------------------------------------------
# Equivalence checks: the PyTorch reference computes what robustjax computes.


def check_equivalence(setup, batch_np, width: float) -> dict:
  """Same weights and inputs on both sides; returns the measured differences.

  1. eval-mode logits; 2. train-mode logits;
  3. PGD-3 from the same start (no random start), BN eval mode;
  4. one training step on the same adversarial batch: loss and the SGD
     update of every parameter and BN running statistic.
  Raises if a difference is larger than float32 noise explains.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch
  from robustjax import attacks
  import torch_reference as tr

  model, st = setup["model"], setup["state"]
  variables = {"params": st.params, "batch_stats": st.batch_stats}
  n = min(32, len(batch_np["label"]))
  x = jnp.asarray(batch_np["image"][:n]).astype(jnp.float32) / 255.0
  y = jnp.asarray(batch_np["label"][:n])
  tmodel = tr.ResNet(width=width)
  tr.load_flax_variables(tmodel, jax.device_get(variables))
  tx_ = tr.to_float(torch.from_numpy(batch_np["image"][:n]), False)
  ty = torch.from_numpy(batch_np["label"][:n]).long()
  out = {}

  # 1-2. logits. (Train mode also checks BN batch statistics.)
  logits_j = np.asarray(model.apply(variables, x, train=False))
  tmodel.eval()
  with torch.no_grad():
    logits_t = tmodel(tx_).numpy()
  out["eval_logits_max_abs_diff"] = float(np.abs(logits_j - logits_t).max())
  tl_j, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  tmodel_copy = tr.ResNet(width=width)
  tmodel_copy.load_state_dict(tmodel.state_dict())
  tmodel_copy.train()
  with torch.no_grad():
    tl_t = tmodel_copy(tx_).numpy()
  out["train_logits_max_abs_diff"] = float(np.abs(np.asarray(tl_j) - tl_t).max())

  # 3. The attack, deterministic start.
  logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
  xa_j = np.asarray(jax.jit(lambda x, y: attacks.pgd(
      logits_fn, x, y, key=None, eps=EPS, step_size=STEP, steps=3,
      random_start=False, loss="ce"))(x, y))
  tmodel.eval()
  xa_t = tr.pgd_linf(tmodel, tx_, ty, eps=EPS, step_size=STEP, steps=3,
                     random_start=False).permute(0, 2, 3, 1).numpy()
  same = np.abs(xa_j - xa_t) < 1e-6
  out["pgd3_fraction_pixels_equal"] = float(same.mean())
  out["pgd3_max_abs_diff"] = float(np.abs(xa_j - xa_t).max())
  out["pgd3_linf_to_x_jax"] = float(np.abs(xa_j - np.asarray(x)).max())
  out["pgd3_linf_to_x_torch"] = float(
      np.abs(xa_t - np.asarray(x)).max())

  # 4. One training step on JAX's adversarial batch, the library's loss and
  # optimizer against torch's backward + SGD.
  obj, tx = make_objective(model, "pgd_at"), setup["tx"]

  def jax_step(params, batch_stats, opt_state, x, x_adv, y):
    (loss, (stats, _)), grads = jax.value_and_grad(obj.loss, has_aux=True)(
        params, batch_stats, x, x_adv, y)
    updates, _ = tx.update(grads, opt_state, params)
    return loss, optax.apply_updates(params, updates), stats

  loss_j, params_j, stats_j = jax.jit(jax_step)(
      st.params, st.batch_stats, st.opt_state, x, jnp.asarray(xa_j), y)
  tstep = tr.PGDATStep(tmodel, eps=EPS, step_size=STEP, steps=3)
  tmodel.train()
  logits = tmodel(torch.from_numpy(np.array(xa_j)).permute(0, 3, 1, 2).contiguous())
  loss_t = torch.nn.functional.cross_entropy(logits, ty)
  tstep.opt.zero_grad()
  loss_t.backward()
  tstep.opt.step()
  out["train_loss_abs_diff"] = abs(float(loss_j) - loss_t.item())
  after = tr.ResNet(width=width)
  tr.load_flax_variables(after, jax.device_get(
      {"params": params_j, "batch_stats": stats_j}))
  ref, got = tmodel.state_dict(), after.state_dict()
  before = tr.ResNet(width=width)
  tr.load_flax_variables(before, jax.device_get(variables))
  # Relative to how far each tensor moved in this step. Parameters: float32
  # noise, plus the odd ReLU whose pre-activation is within ~1e-6 of zero and
  # lands on the other side in one library (seen: one unit of 262k flipping
  # moved one kernel's update by 0.6%; in float64 both sides agree to 1e-7).
  # Running statistics: PyTorch updates running_var with the unbiased batch
  # variance (n / (n - 1)), flax with the biased one; n = batch * H * W is
  # smallest in stage 4 (32 * 4 * 4 here), so expect ~0.1-0.6% there.
  worst = {"params": 0.0, "running_mean": 0.0, "running_var": 0.0}
  for k in ref:
    if k.endswith("num_batches_tracked") or k in ("mean", "std"):
      continue
    moved = (ref[k] - before.state_dict()[k]).abs().max().item()
    diff = (ref[k] - got[k]).abs().max().item()
    kind = k.rsplit(".", 1)[-1]
    kind = kind if kind in worst else "params"
    worst[kind] = max(worst[kind], diff / max(moved, 1e-12))
  out["sgd_update_worst_relative_diff"] = worst["params"]
  out["bn_running_mean_worst_relative_diff"] = worst["running_mean"]
  out["bn_running_var_worst_relative_diff"] = worst["running_var"]

  problems = []
  if out["eval_logits_max_abs_diff"] > 1e-3:
    problems.append("eval logits")
  if out["train_logits_max_abs_diff"] > 1e-3:
    problems.append("train logits")
  if out["pgd3_fraction_pixels_equal"] < 0.99:
    problems.append("PGD iterates")
  if out["train_loss_abs_diff"] > 1e-4:
    problems.append("training loss")
  if worst["params"] > 2e-2 or worst["running_mean"] > 1e-3:
    problems.append("SGD update")
  if worst["running_var"] > 2e-2:
    problems.append("BN running variance")
  out["ok"] = not problems
  if problems:
    raise SystemExit(f"equivalence check failed ({', '.join(problems)}): "
                     f"{json.dumps(out, indent=1)}")
  return out


def check_other_workloads(setup, batch_np, width: float,
                          alphas: tuple[float, ...]) -> dict:
  """Loss- and logit-level agreement for standard_step, trades_step and
  interp_eval, and the APGD-CE outcome on both sides (recorded; APGD's
  step-by-step agreement with torchattacks is tests/test_autoattack_reference.py).
  Raises if a difference is larger than float32 noise explains."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from robustjax.weightspace import interpolate
  import torch_reference as tr

  model, st = setup["model"], setup["state"]
  variables = {"params": st.params, "batch_stats": st.batch_stats}
  n = min(32, len(batch_np["label"]))
  x = jnp.asarray(batch_np["image"][:n]).astype(jnp.float32) / 255.0
  y = jnp.asarray(batch_np["label"][:n])
  tx_ = tr.to_float(torch.from_numpy(batch_np["image"][:n]), False)
  ty = torch.from_numpy(batch_np["label"][:n]).long()

  def twin(v):
    m = tr.ResNet(width=width)
    tr.load_flax_variables(m, jax.device_get(v))
    return m

  out = {}
  # standard_step: the train-mode CE loss.
  std = make_objective(model, "standard")
  loss_j, _ = std.loss(st.params, st.batch_stats, x, None, y)
  m = twin(variables).train()
  with torch.no_grad():
    loss_t = torch.nn.functional.cross_entropy(m(tx_), ty).item()
  out["standard_loss_abs_diff"] = abs(float(loss_j) - loss_t)

  # trades_step: the attack from the same start (JAX's draw of the 0.001
  # N(0, I) noise, key as in the objective with one key), then the loss on
  # JAX's adversarial batch.
  trades = make_objective(model, "trades", steps=3)
  key = jax.random.key(5)
  xa_j = np.asarray(jax.jit(trades.attack)(variables, x, y, key))
  noise = np.array(jax.random.normal(key, x.shape, x.dtype))
  m = twin(variables).eval()
  xa_t = tr.trades_attack(
      m, tx_, eps=EPS, step_size=STEP, steps=3,
      init_noise=torch.from_numpy(noise).permute(0, 3, 1, 2).contiguous()
  ).permute(0, 2, 3, 1).numpy()
  out["trades_attack_fraction_pixels_equal"] = float(
      (np.abs(xa_j - xa_t) < 1e-6).mean())
  xa_j = np.array(xa_j)  # writable, for torch.from_numpy
  tl_j, _ = trades.loss(st.params, st.batch_stats, x, jnp.asarray(xa_j), y)
  m = twin(variables).train()
  with torch.no_grad():
    tl_t, _ = tr.trades_loss(m, tx_, torch.from_numpy(xa_j).permute(
        0, 3, 1, 2).contiguous(), ty, TRADES_BETA)
  out["trades_loss_abs_diff"] = abs(float(tl_j) - tl_t.item())

  # interp_eval: logits of the interpolated network at every alpha.
  vb = setup["variables_b"]
  sa, sb = twin(variables).state_dict(), twin(vb).state_dict()
  worst = 0.0
  for alpha in alphas:
    v = interpolate.interpolate_variables(variables, vb, alpha)
    lj = np.asarray(model.apply(v, x, train=False))
    m = twin(variables)
    m.load_state_dict(tr.lerp_state_dicts(sa, sb, alpha))
    with torch.no_grad():
      lt = m.eval()(tx_).numpy()
    worst = max(worst, float(np.abs(lj - lt).max()))
  out["interp_logits_max_abs_diff"] = worst

  # apgd_ce_eval: robust accuracy of both (different random starts, so
  # only roughly equal; recorded, not asserted).
  yp = np.asarray(jnp.argmax(model.apply(variables, x, train=False), -1))
  sub = {"image": batch_np["image"][:n], "label": yp.astype(np.int32),
         "mask": np.ones(n, bool), "index": np.arange(n, dtype=np.int32)}
  from robustjax import sharding
  counts = make_apgd_eval_step(model, 10, sharding.make_mesh(1))(
      variables, sub, jax.random.key(3))
  try:
    ev = tr.APGDEval(twin(variables), eps=EPS, steps=10)
    tc = ev(torch.from_numpy(sub["image"]), torch.from_numpy(yp).long())
    out["apgd10_robust_fraction_torch"] = tc["adv"].item() / n
  except ImportError:
    out["apgd10_robust_fraction_torch"] = None
  out["apgd10_robust_fraction_jax"] = float(counts["adv"]) / n

  problems = []
  if out["standard_loss_abs_diff"] > 1e-4:
    problems.append("standard loss")
  # Near x the KL objective is flat (its gradient is second order in the
  # 0.001 start noise), so float32 rounding decides the sign of the smallest
  # gradient components: ~1.5% of pixels differ after 3 steps (measured).
  if out["trades_attack_fraction_pixels_equal"] < 0.95:
    problems.append("TRADES attack iterates")
  if out["trades_loss_abs_diff"] > 1e-4:
    problems.append("TRADES loss")
  if out["interp_logits_max_abs_diff"] > 1e-3:
    problems.append("interpolated logits")
  out["ok"] = not problems
  if problems:
    raise SystemExit(f"equivalence check failed ({', '.join(problems)}): "
                     f"{json.dumps(out, indent=1)}")
  return out


# ---------------------------------------------------------------------------
# The machine's peak and the PyTorch side's memory.


def measure_peak_flops(n: int, reps: int = 10) -> dict:
  """FLOP/s of a square f32 matmul (2 n^3 FLOPs), the fastest of ``reps``
  calls (a peak: other processes can only slow a call down), in JAX (one
  device) and PyTorch; the machine's peak is the faster of the two."""
  import jax
  import numpy as np
  import torch
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  ja = jax.device_put(a)
  mm = jax.jit(lambda u, v: u @ v).lower(ja, ja).compile()
  ta = torch.from_numpy(a)

  def timed(fn):
    fn()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times)

  out = {"n": n, "reps": reps,
         "jax_flops_per_s": timed(lambda: mm(ja, ja).block_until_ready()),
         "torch_flops_per_s": timed(lambda: torch.mm(ta, ta))}
  out["peak_flops_per_s"] = max(out["jax_flops_per_s"],
                                out["torch_flops_per_s"])
  return out


def rss_bytes() -> int:
  """This process's resident set size now."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
  """This process's peak resident set size (VmHWM).

  Not ``ru_maxrss``: Linux carries that across ``execve``, so a child of
  the (large) benchmark process would start with its parent's peak.
  """
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise OSError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False if refused."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def torch_memory_probe(args) -> None:
  """Child process: builds one workload's PyTorch step, runs it twice and
  prints the peak resident-set growth over the state before the model and
  inputs existed (weights, optimizer state, inputs, activations and the
  allocator's cached blocks: what the step costs the machine)."""
  import torch
  torch.set_num_threads(args.threads)
  import torch_reference as tr
  try:
    import torchattacks  # noqa: F401  (imported before the baseline)
  except ImportError:
    pass
  spec = workload_specs(args)[args.torch_memory_probe]
  batch = make_batch(spec["batch"], args.seed)
  cl = args.probe_layout == "channels_last"

  def build():
    model = tr.ResNet(width=args.width)
    if cl:
      model = model.to(memory_format=torch.channels_last)
    return model, spec["torch"](model, cl, tr.ResNet(width=args.width
                                                     ).state_dict())

  # Page in the code (libtorch, oneDNN kernels) on a 2-image batch first, so
  # the measured growth is the step's data, not the libraries' first use.
  _, warm = build()
  warm(torch.from_numpy(batch["image"][:2]),
       torch.from_numpy(batch["label"][:2]).long())
  del warm
  gc.collect()
  reset = reset_peak_rss()
  base = rss_bytes()
  base_peak = peak_rss_bytes()
  _, step = build()
  images = torch.from_numpy(batch["image"])
  labels = torch.from_numpy(batch["label"]).long()
  for _ in range(2):
    step(images, labels)
  peak = peak_rss_bytes()
  print(json.dumps({"peak_rss_growth_bytes": peak - base,
                    "rss_before_bytes": base, "peak_rss_before_bytes":
                    base_peak, "peak_reset": reset,
                    "valid": reset or base_peak <= base + (1 << 20)}))


def measure_torch_memory(args, name: str, layout: str) -> dict | None:
  """Runs ``torch_memory_probe`` for one workload in a child process."""
  cmd = [sys.executable, str(Path(__file__).resolve()),
         f"--torch-memory-probe={name}", f"--probe-layout={layout}",
         f"--width={args.width}", f"--batch={args.batch}",
         f"--eval-batch={args.eval_batch}", f"--apgd-steps={args.apgd_steps}",
         "--alphas=" + ",".join(str(a) for a in args.alphas),
         f"--threads={args.threads}", f"--seed={args.seed}"]
  try:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if not out["valid"]:
      print(f"warning: PyTorch memory probe for {name}: the peak RSS could "
            "not be reset and was already above the baseline", file=sys.stderr)
      return None
    return out
  except (subprocess.SubprocessError, ValueError, IndexError) as e:
    print(f"warning: PyTorch memory probe for {name} failed: {e}",
          file=sys.stderr)
    return None


# ---------------------------------------------------------------------------
# The workloads.


def workload_specs(args) -> dict:
  """name -> {batch, reps, warmup, images_per_call, jax: runner factory
  (setup, batch, seed, mesh), torch: step factory (model, channels_last,
  other_state_dict), labels: 'random' or 'predicted'}."""
  import torch_reference as tr
  train = dict(batch=args.batch, reps=args.reps, warmup=args.warmup,
               images_per_call=1, labels="random")
  evals = dict(batch=args.eval_batch, reps=args.eval_reps,
               warmup=min(args.warmup, 1), images_per_call=1, labels="random")
  kw = dict(eps=EPS, step_size=STEP)

  def train_runner(objective):
    return lambda *a: JaxTrain(*a, objective_name=objective)

  return {
      "standard_step": dict(
          train, jax=train_runner("standard"),
          torch=lambda m, cl, _: tr.StandardStep(m, channels_last=cl)),
      "pgd10_at_step": dict(
          train, jax=train_runner("pgd_at"),
          torch=lambda m, cl, _: tr.PGDATStep(m, steps=10, channels_last=cl,
                                              **kw)),
      "trades_step": dict(
          train, jax=train_runner("trades"),
          torch=lambda m, cl, _: tr.TRADESStep(m, steps=10, beta=TRADES_BETA,
                                               channels_last=cl, **kw)),
      "pgd20_eval": dict(
          evals, jax=lambda *a: JaxEval(*a, steps=20),
          torch=lambda m, cl, _: tr.PGDEval(m, steps=20, channels_last=cl,
                                            **kw)),
      # Labels = the network's own clean predictions, so every point is
      # attacked: torchattacks skips points that are already misclassified
      # (most of them, for random labels), robustjax attacks the whole batch.
      "apgd_ce_eval": dict(
          evals, labels="predicted",
          jax=lambda *a: JaxAPGD(*a, steps=args.apgd_steps),
          torch=lambda m, cl, _: tr.APGDEval(m, eps=EPS, steps=args.apgd_steps,
                                             channels_last=cl)),
      "interp_eval": dict(
          evals, images_per_call=len(args.alphas),
          jax=lambda *a: JaxInterp(*a, alphas=args.alphas),
          torch=lambda m, cl, other: tr.InterpEval(
              m, {k: v.clone() for k, v in m.state_dict().items()}, other,
              args.alphas, channels_last=cl)),
  }


def run_workload(name, spec, jax_fns, torch_fns, peak: float,
                 torch_memory: dict) -> list[dict]:
  """One result row per JAX variant, each against the faster PyTorch layout;
  all variants are timed interleaved in the same repetitions."""
  fns = {**jax_fns, **{f"torch_{k}": v for k, v in torch_fns.items()}}
  times = time_interleaved(fns, spec["reps"], spec["warmup"])
  med = {k: median(v) for k, v in times.items()}
  ref = min((k for k in fns if k.startswith("torch_")), key=lambda k: med[k])
  images = spec["batch"] * spec["images_per_call"]
  # The same work on every side: the single-device program's FLOPs.
  cost = jax_fns["jax"].cost()
  rows = []
  for variant, jax_fn in jax_fns.items():
    ratios = [t_ref / t_jax for t_ref, t_jax in zip(times[ref], times[variant])]
    mem = cost if variant == "jax" else jax_fn.cost()
    rows.append({
        "workload": name,
        "jax_variant": variant,
        "jax_devices": jax_fn.num_devices,
        "batch": spec["batch"],
        "images_per_call": images,
        "reps": spec["reps"],
        "jax_images_per_s": images / med[variant],
        "torch_images_per_s": images / med[ref],
        "torch_reference": ref.removeprefix("torch_"),
        "ratio_jax_over_torch": median(ratios),
        "jax_compile_s": jax_fn.compile_s,
        "flops_per_call": cost["flops"],
        "jax_roofline_fraction": cost["flops"] / med[variant] / peak,
        "torch_roofline_fraction": cost["flops"] / med[ref] / peak,
        # Per device for the n-device variant (each holds its batch shard
        # and a replica of the weights).
        "jax_peak_memory_bytes": mem["memory_bytes"],
        "jax_memory_detail": mem["memory_detail"],
        "torch_peak_memory_bytes": (torch_memory or {}).get(
            "peak_rss_growth_bytes"),
        "median_s": med,
        "images_per_s": {k: images / v for k, v in med.items()},
        "times_s": times,
    })
  return rows


def format_table(results: list[dict]) -> str:
  head = ("| workload | JAX devices | batch | JAX img/s | PyTorch img/s | "
          "JAX/PyTorch | GFLOP/call | JAX % of peak | PyTorch % of peak | "
          "JAX MiB | PyTorch MiB | JAX compile (s) |")
  lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  mib = lambda b: "n/a" if b is None else f"{b / 2 ** 20:.0f}"  # noqa: E731
  for r in results:
    lines.append(
        f"| {r['workload']} | {r['jax_devices']} | {r['batch']} | "
        f"{r['jax_images_per_s']:.1f} | "
        f"{r['torch_images_per_s']:.1f} ({r['torch_reference']}) | "
        f"{r['ratio_jax_over_torch']:.2f} | {r['flops_per_call'] / 1e9:.1f} | "
        f"{100 * r['jax_roofline_fraction']:.1f} | "
        f"{100 * r['torch_roofline_fraction']:.1f} | "
        f"{mib(r['jax_peak_memory_bytes'])} | "
        f"{mib(r['torch_peak_memory_bytes'])} | {r['jax_compile_s']:.1f} |")
  return "\n".join(lines)


def predicted_labels(setup, images):
  """The network's own clean predictions (see apgd_ce_eval)."""
  import jax.numpy as jnp
  import numpy as np
  st = setup["state"]
  logits = setup["model"].apply(
      {"params": st.params, "batch_stats": st.batch_stats},
      jnp.asarray(images).astype(jnp.float32) / 255.0, train=False)
  return np.asarray(jnp.argmax(logits, -1)).astype(np.int32)


def main(argv=None) -> None:
  args = parse_args(argv)
  threads, affinity = limit_threads(args.threads)
  args.threads = threads
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.omp_wait_policy.lower() != "default":
    os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
  sys.path.insert(0, str(ROOT))
  sys.path.insert(0, str(HERE))
  if args.torch_memory_probe:
    torch_memory_probe(args)
    return
  import jax
  if not args.ynnpack_convolutions:  # what launch.py runs with
    from robustjax import xla_cpu
    xla_cpu.use_xla_convolutions()
  jax_devices = threads if args.jax_devices is None else args.jax_devices
  # Before any device is touched: extra CPU devices for the data-parallel
  # variant (the single-device variant uses only the first).
  jax.config.update("jax_num_cpu_devices", max(1, jax_devices))
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  import torch
  import torch_reference as tr
  torch.set_num_threads(threads)
  torch.manual_seed(args.seed)

  info = machine_info(threads, affinity)
  print(f"threads: {threads} for both (CPU affinity {affinity}; "
        f"torch.set_num_threads({torch.get_num_threads()}), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); "
        f"jax {jax.__version__}, torch {torch.__version__}; "
        f"load average {info['load_average_at_start'][0]:.1f}", flush=True)

  setup = jax_setup(args.width, args.seed)
  variables_np = jax.device_get({"params": setup["state"].params,
                                 "batch_stats": setup["state"].batch_stats})
  specs = workload_specs(args)
  peak = measure_peak_flops(args.matmul_n)
  print(f"peak: {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (f32 matmul "
        f"n={args.matmul_n}: JAX {peak['jax_flops_per_s'] / 1e9:.1f}, "
        f"PyTorch {peak['torch_flops_per_s'] / 1e9:.1f})", flush=True)
  report = {"machine": info, "peak": peak, "config": {
      "model": "resnet18", "width": args.width, "num_classes": 10,
      "image": [32, 32, 3], "eps": EPS, "step_size": STEP,
      "workloads": args.workloads, "batch": args.batch,
      "eval_batch": args.eval_batch, "apgd_steps": args.apgd_steps,
      "alphas": list(args.alphas), "trades_beta": TRADES_BETA,
      "reps": args.reps, "eval_reps": args.eval_reps, "warmup": args.warmup,
      "layouts": args.layouts, "seed": args.seed,
      "compilation_cache_dir": args.cache_dir or None},
      "memory_method": {
          "jax": "compiled.memory_analysis(): arguments + outputs - aliased "
                 "(donated) + temporaries, of the 1-device program (per "
                 "device for the n-device variant)",
          "torch": "peak resident-set growth (ru_maxrss minus the RSS after "
                   "importing torch) of a child process that builds the "
                   "model and inputs and runs the step twice, in the "
                   "reference layout; includes allocator caching"},
      "flops_method": "XLA cost_analysis()['flops'] of the 1-device JAX "
                      "program, used for both sides",
      "results": []}

  if args.check:
    t0 = time.perf_counter()
    batch = make_batch(args.batch, args.seed)
    report["equivalence_check"] = check_equivalence(setup, batch, args.width)
    report["equivalence_check"].update(check_other_workloads(
        setup, batch, args.width, args.alphas))
    print(f"equivalence check passed ({time.perf_counter() - t0:.0f} s): "
          f"{report['equivalence_check']}", flush=True)

  def torch_models():
    out = {}
    for layout in args.layouts:
      m = tr.ResNet(width=args.width)
      tr.load_flax_variables(m, variables_np)
      if layout == "channels_last":
        m = m.to(memory_format=torch.channels_last)
      out[layout] = m
    return out

  other = tr.ResNet(width=args.width)
  tr.load_flax_variables(other, setup["variables_b"])
  other_state = other.state_dict()

  for i, name in enumerate(args.workloads):
    spec = specs[name]
    batch_np = make_batch(spec["batch"], args.seed + 100 * i)
    if spec["labels"] == "predicted":
      batch_np["label"] = predicted_labels(setup, batch_np["image"])
    jax_fns = {k: spec["jax"](setup, batch_np, args.seed, mesh)
               for k, mesh in jax_meshes(jax_devices).items()}
    print(f"[{name}] JAX compile {jax_fns['jax'].compile_s:.1f} s",
          flush=True)
    images = torch.from_numpy(batch_np["image"])
    labels = torch.from_numpy(batch_np["label"]).long()
    torch_fns = {}
    for layout, m in torch_models().items():
      step = spec["torch"](m, layout == "channels_last", other_state)
      torch_fns[layout] = (lambda step=step: step(images, labels))
    # Memory before timing, in the layout that will most likely be the
    # reference (channels_last when timed; it was the faster every time).
    layout = "channels_last" if "channels_last" in args.layouts else "nchw"
    torch_mem = measure_torch_memory(args, name, layout) if args.memory else None
    rows = run_workload(name, spec, jax_fns, torch_fns,
                        peak["peak_flops_per_s"], torch_mem)
    for row in rows:
      row["torch_memory_layout"] = layout
      metrics = jax_fns[row["jax_variant"]].metrics
      if isinstance(metrics, dict):
        row["jax_last_metrics"] = {k: float(v) for k, v in metrics.items()}
    report["results"].extend(rows)
    print(format_table(rows), flush=True)

  report["machine"]["load_average_at_end"] = os.getloadavg()
  table = format_table(report["results"])
  report["table_markdown"] = table
  print()
  print(f"ResNet-18 width {args.width}, CPU, {threads} threads for JAX and "
        f"PyTorch; medians of interleaved repetitions; PyTorch eager "
        f"(layout in brackets = the faster one, used as the reference); "
        f"peak {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (f32 matmul); "
        f"load average {info['load_average_at_start'][0]:.1f} at start, "
        f"{report['machine']['load_average_at_end'][0]:.1f} at end")
  print(table)
  seen = set()
  for r in report["results"]:
    if r["workload"] in seen:
      continue
    seen.add(r["workload"])
    detail = ", ".join(f"{k} {v:.1f}" for k, v in r["images_per_s"].items())
    print(f"  {r['workload']} images/s by variant: {detail}")
  write_json(args.out, report)


if __name__ == "__main__":
  main()
