"""robustjax vs a PyTorch eager reference, side by side in one process.

Workloads (same network, same batch, same attack on both sides):

  pgd10_at_step  one Madry PGD-AT training step: Linf PGD-10 (eps 8/255, step
                 2/255, uniform random start, CE) with BatchNorm in eval mode,
                 then CE on the adversarial batch with BN in train mode and
                 one SGD step (momentum 0.9, coupled weight decay 5e-4).
                 JAX: robustjax.training.step.make_train_step with the
                 library's 'pgd_at' objective and SGD optimizer.
  pgd20_eval     clean + PGD-20 accuracy of one batch (no training step).
                 JAX: robustjax.evaluation.make_eval_step.

Model: robustjax's CIFAR ResNet-18 at --width (0.25: channels 16/32/64/128),
32x32x3 uint8 inputs, 10 classes; the PyTorch model (torch_reference.py) gets
the JAX initial weights, and --check (on by default) verifies that both sides
compute the same logits, attack and SGD update before anything is timed.

Timing: one step per repetition, JAX and every PyTorch variant interleaved
(order rotated each repetition) so machine noise hits all of them alike; we
report medians, and the ratio is the median of per-repetition ratios. The
JAX step is compiled ahead of time (``.lower().compile()``), and that time is
the compile time reported; a few warm-up calls per side are not timed.
PyTorch runs eager, with NCHW and with channels_last; the faster of the two
is the reference. Both libraries use --threads threads: the process's CPU
affinity is limited to that many CPUs (XLA:CPU sizes its thread pool from the
affinity mask) and torch.set_num_threads(--threads). OMP_WAIT_POLICY=PASSIVE
by default (--omp-wait-policy): with libgomp's default spin-waiting, PyTorch
ran 10x slower whenever other processes competed for the cores.

Usage:
  .venv/bin/python benchmarks/run.py                 # both workloads
  .venv/bin/python benchmarks/run.py --workloads=train --reps=20
Writes benchmarks/results/pgd_at_step.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

EPS, STEP = 8 / 255, 2 / 255


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--width", type=float, default=0.25,
                 help="ResNet-18 width multiplier (default 0.25)")
  p.add_argument("--batch", type=int, default=128,
                 help="batch of the PGD-10 AT step (default 128)")
  p.add_argument("--eval-batch", type=int, default=500,
                 help="batch of the PGD-20 evaluation (default 500)")
  p.add_argument("--reps", type=int, default=10,
                 help="timed repetitions of the AT step per side (default 10)")
  p.add_argument("--eval-reps", type=int, default=5,
                 help="timed repetitions of the PGD-20 eval (default 5)")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed calls per side before timing (default 2)")
  p.add_argument("--threads", type=int, default=None,
                 help="threads for both libraries (default: all CPUs this "
                      "process may use)")
  p.add_argument("--jax-devices", type=int, default=None,
                 help="also time JAX with the host split into this many CPU "
                      "devices, the batch sharded across them (default: "
                      "--threads; 1 times the single-device step only)")
  p.add_argument("--workloads", default="train,eval",
                 help="comma list of: train, eval (default both)")
  p.add_argument("--layouts", default="nchw,channels_last",
                 help="PyTorch memory formats to time (default both)")
  p.add_argument("--omp-wait-policy", default="PASSIVE",
                 help="OMP_WAIT_POLICY for PyTorch's OpenMP threads, set before "
                      "torch is imported unless the environment already sets "
                      "it (default PASSIVE; 'default' leaves libgomp's own "
                      "spin-waiting, which is ~10x slower on a loaded machine)")
  p.add_argument("--no-check", dest="check", action="store_false",
                 help="skip the JAX/PyTorch equivalence checks")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=str(HERE / "results" / "pgd_at_step.json"),
                 help="JSON output path")
  args = p.parse_args(argv)
  args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
  bad = set(args.workloads) - {"train", "eval"}
  if bad:
    p.error(f"unknown workloads {sorted(bad)}; choose from train, eval")
  args.layouts = [w.strip() for w in args.layouts.split(",") if w.strip()]
  if set(args.layouts) - {"nchw", "channels_last"} or not args.layouts:
    p.error("--layouts takes nchw and/or channels_last")
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
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
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
  from robustjax import models, sharding
  from robustjax.training import objectives, optimizer
  from robustjax.training import step as train_step
  model = models.create_model("resnet18", num_classes=10, width=width)
  obj_cfg = ml_collections.ConfigDict(dict(
      name="pgd_at", eps=EPS, step_size=STEP, steps=10, beta=6.0,
      random_start=True))
  opt_cfg = ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
      weight_decay_on="all", schedule="constant", boundaries=(), decay=0.1,
      warmup_steps=0, peak_fraction=0.4))
  objective = objectives.make_objective(obj_cfg, model)
  tx, schedule = optimizer.make_optimizer(opt_cfg, total_steps=100_000)
  mesh = sharding.make_mesh(1)
  state = jax.device_get(
      train_step.init_state(model, tx, jax.random.key(seed), (32, 32, 3)))
  return dict(model=model, objective=objective, tx=tx, schedule=schedule,
              mesh=mesh, state=state)


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


class JaxTrain:
  """Calls the compiled train step, keeping the donated state."""

  def __init__(self, setup, batch_np, seed, mesh):
    import jax
    from robustjax import sharding
    from robustjax.training import step as train_step
    # A fresh copy: the step donates (deletes) its input state.
    self.state = sharding.put_replicated(jax.device_get(setup["state"]), mesh)
    self.batch = sharding.put_global_batch(batch_np, mesh)
    self.key = sharding.put_replicated(jax.random.key(seed + 1), mesh)
    step = train_step.make_train_step(setup["objective"], setup["tx"],
                                      setup["schedule"], mesh, augment=False)
    self.compiled, self.compile_s = compile_timed(
        step, self.state, self.batch, self.key)
    self.num_devices = mesh.devices.size
    self.metrics = None

  def __call__(self):
    import jax
    self.state, self.metrics = self.compiled(self.state, self.batch, self.key)
    jax.block_until_ready(self.state)


class JaxEval:
  def __init__(self, setup, batch_np, seed, mesh, steps=20):
    import jax
    import ml_collections
    import numpy as np
    from robustjax import evaluation, sharding
    attack_cfg = ml_collections.ConfigDict(dict(
        eps=EPS, step_size=STEP, steps=steps, norm="linf", random_start=True,
        restarts=1, loss="ce"))
    st = setup["state"]
    self.variables = sharding.put_replicated(
        {"params": st.params, "batch_stats": st.batch_stats}, mesh)
    self.batch = sharding.put_global_batch(
        dict(batch_np, mask=np.ones(len(batch_np["label"]), bool),
             index=np.arange(len(batch_np["label"]), dtype=np.int32)), mesh)
    self.key = sharding.put_replicated(jax.random.key(seed + 2), mesh)
    step = evaluation.make_eval_step(setup["model"], attack_cfg, mesh)
    self.compiled, self.compile_s = compile_timed(
        step, self.variables, self.batch, self.key)
    self.num_devices = mesh.devices.size
    self.out = None

  def __call__(self):
    import jax
    self.out = jax.block_until_ready(
        self.compiled(self.variables, self.batch, self.key))


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
  obj, tx = setup["objective"], setup["tx"]

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


# ---------------------------------------------------------------------------


def run_workload(name, batch, reps, warmup, jax_fns, torch_fns) -> list[dict]:
  """One result row per JAX variant, each against the faster PyTorch layout;
  all variants are timed interleaved in the same repetitions."""
  fns = {**jax_fns, **{f"torch_{k}": v for k, v in torch_fns.items()}}
  times = time_interleaved(fns, reps, warmup)
  med = {k: median(v) for k, v in times.items()}
  ref = min((k for k in fns if k.startswith("torch_")), key=lambda k: med[k])
  rows = []
  for variant, jax_fn in jax_fns.items():
    ratios = [t_ref / t_jax for t_ref, t_jax in zip(times[ref], times[variant])]
    rows.append({
        "workload": name,
        "jax_variant": variant,
        "jax_devices": jax_fn.num_devices,
        "batch": batch,
        "reps": reps,
        "jax_images_per_s": batch / med[variant],
        "torch_images_per_s": batch / med[ref],
        "torch_reference": ref.removeprefix("torch_"),
        "ratio_jax_over_torch": median(ratios),
        "jax_compile_s": jax_fn.compile_s,
        "median_s": med,
        "images_per_s": {k: batch / v for k, v in med.items()},
        "times_s": times,
    })
  return rows


def format_table(results: list[dict]) -> str:
  head = ("| workload | JAX devices | batch | JAX img/s | PyTorch img/s | "
          "JAX/PyTorch | JAX compile (s) |")
  lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    lines.append(
        f"| {r['workload']} | {r['jax_devices']} | {r['batch']} | "
        f"{r['jax_images_per_s']:.1f} | "
        f"{r['torch_images_per_s']:.1f} ({r['torch_reference']}) | "
        f"{r['ratio_jax_over_torch']:.2f} | {r['jax_compile_s']:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  args = parse_args(argv)
  threads, affinity = limit_threads(args.threads)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.omp_wait_policy.lower() != "default":
    os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
  sys.path.insert(0, str(ROOT))
  import jax
  jax_devices = threads if args.jax_devices is None else args.jax_devices
  # Before any device is touched: extra CPU devices for the data-parallel
  # variant (the single-device variant uses only the first).
  jax.config.update("jax_num_cpu_devices", max(1, jax_devices))
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
  report = {"machine": info, "config": {
      "model": "resnet18", "width": args.width, "num_classes": 10,
      "image": [32, 32, 3], "eps": EPS, "step_size": STEP,
      "train": "pgd_at, 10 steps, random start, SGD lr 0.1 m 0.9 wd 5e-4",
      "eval": "pgd, 20 steps, random start, clean + adversarial forward",
      "reps": args.reps, "eval_reps": args.eval_reps, "warmup": args.warmup,
      "layouts": args.layouts, "seed": args.seed}, "results": []}

  if args.check:
    t0 = time.perf_counter()
    report["equivalence_check"] = check_equivalence(
        setup, make_batch(args.batch, args.seed), args.width)
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

  def bench(name, batch_np, jax_cls, torch_step, reps, warmup):
    """Times one workload: every JAX mesh variant against every PyTorch
    layout, interleaved; appends and prints the result rows."""
    jax_fns = {k: jax_cls(setup, batch_np, args.seed, mesh)
               for k, mesh in jax_meshes(jax_devices).items()}
    print(f"[{name}] JAX compile {jax_fns['jax'].compile_s:.1f} s",
          flush=True)
    images = torch.from_numpy(batch_np["image"])
    labels = torch.from_numpy(batch_np["label"]).long()
    torch_fns = {}
    for layout, m in torch_models().items():
      step = torch_step(m, channels_last=layout == "channels_last")
      torch_fns[layout] = (lambda step=step: step(images, labels))
    rows = run_workload(name, len(labels), reps, warmup, jax_fns, torch_fns)
    for row in rows:
      metrics = getattr(jax_fns[row["jax_variant"]], "metrics", None)
      if metrics is not None:
        row["jax_last_metrics"] = {k: float(v) for k, v in metrics.items()}
    report["results"].extend(rows)
    print(format_table(rows), flush=True)

  if "train" in args.workloads:
    bench("pgd10_at_step", make_batch(args.batch, args.seed), JaxTrain,
          lambda m, channels_last: tr.PGDATStep(
              m, eps=EPS, step_size=STEP, steps=10,
              channels_last=channels_last),
          args.reps, args.warmup)
  if "eval" in args.workloads:
    # One warm-up call is enough here: each call is ~20 pass-equivalents.
    bench("pgd20_eval", make_batch(args.eval_batch, args.seed + 100), JaxEval,
          lambda m, channels_last: tr.PGDEval(
              m, eps=EPS, step_size=STEP, steps=20,
              channels_last=channels_last),
          args.eval_reps, min(args.warmup, 1))

  report["machine"]["load_average_at_end"] = os.getloadavg()
  table = format_table(report["results"])
  report["table_markdown"] = table
  print()
  print(f"ResNet-18 width {args.width}, CPU, {threads} threads for JAX and "
        f"PyTorch; medians of interleaved repetitions; PyTorch eager "
        f"(layout in brackets = the faster one, used as the reference)")
  print(table)
  seen = set()
  for r in report["results"]:
    if r["workload"] in seen:
      continue
    seen.add(r["workload"])
    detail = ", ".join(f"{k} {v:.1f}" for k, v in r["images_per_s"].items())
    print(f"  {r['workload']} images/s by variant: {detail}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
