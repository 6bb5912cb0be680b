"""AutoAttack (Croce & Hein 2020): the standard cascade, ``rand`` and custom.

One module of about 460 lines on purpose: the configuration, the compiled
chunks, the cascade and its final checks only serve one driver, whose
bookkeeping (which points are still robust, which key each pass gets) is
easiest to check in one place. The attacks themselves come from the attack
registry (``registry.Stepwise``).

``run_autoattack`` follows fra31/auto-attack's ``run_standard_evaluation``:

  1. a clean pass; misclassified points count as broken;
  2. each attack of the version runs only on the points still robust,
     starting from the clean image, and a point is broken when a fresh
     forward pass on the attack's output misclassifies it (never by the
     attack's own bookkeeping); targeted attacks loop over the top-9
     non-true classes of the clean logits, each on the points still robust;
  3. the result is the per-example worst case, and the final adversarial
     examples are checked: inside the eps ball and [0, 1], and misclassified
     exactly where the cascade says so.

Versions (the reference's hyper-parameters):

  ``standard``  APGD-CE (100 steps), APGD-T (100 steps x 9 targets),
                FAB-T (100 steps x 9 targets), Square (5000 queries)
  ``rand``      APGD-CE and APGD-DLR with EOT over 20 gradient samples
  ``custom``    any list of ``apgd-ce``, ``apgd-dlr``, ``apgd-t``,
                ``fab-t``, ``square``

The cascade runs on the host over padded batches of the points still robust,
their sizes taken from a coarse ladder (padding under a quarter of the
points, few distinct shapes: ``_batch_plan``), one compiled program per
attack and batch size, the batch sharded over the mesh; each attack's
iterations run as compiled chunks of ``chunk_size`` unrolled steps. Every
random number is drawn from ``fold_in(attack_key, example_index)``, so the
result does not depend on the batch size or the number of devices (up to
float summation order).

Randomised models (``config.randomised``: version ``rand``, or
``eot_iter > 1``) are called one example at a time under ``vmap``
(``apgd.per_example``), and every forward pass gets a fresh key per
example: the clean pass, each EOT sample and each Square or FAB query, each
fresh check after an attack, and the final re-evaluation. Each of these keys
is a function of the seed, the pass and the example's index only, so a
randomised model's result is the same for any batch size or device count
too. Deterministic models get one fixed key for the whole batch (they ignore
it) and run batched.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data, sharding
from robustjax.attacks import (apgd as apgd_lib, checks, iterative as it,
                               registry)
from robustjax.attacks.checks import NORMS
from robustjax.errors import ConfigError

# ``apply_fn(variables, x, key) -> logits``; deterministic models ignore key.
ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
# How far outside the ball a returned point may lie: float rounding only.
BALL_TOLERANCE = 1e-5
# Iterations per compiled chunk, every attack. 5 compiles the standard cascade
# faster than 10 on XLA:CPU; the compute of the two was within run-to-run
# spread (benchmarks/README.md, "AutoAttack's cascade: chunks and padding").
DEFAULT_CHUNK_SIZE = 5


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
  """Hyper-parameters of the cascade; defaults are the reference's."""
  eps: float = 8 / 255
  norm: str = "linf"
  version: str = "standard"
  attacks: tuple[str, ...] = ()      # only for version='custom'
  apgd_steps: int = 100
  apgd_restarts: int = 1
  apgd_rho: float = 0.75
  eot_iter: int = 1                  # 20 for version='rand'
  n_target_classes: int = 9
  fab_steps: int = 100
  square_queries: int = 5000
  square_p_init: float = 0.8
  seed: int = 0

  def attack_list(self) -> tuple[str, ...]:
    if self.version == "custom":
      return self.attacks
    return VERSIONS[self.version]

  @property
  def randomised(self) -> bool:
    """Whether the model is treated as randomised (fresh noise per pass).

    True for version ``rand`` and for any ``eot_iter > 1``; the model is
    then called per example with a key of its own for every forward pass,
    and the final re-evaluation may disagree with the cascade's flags.
    """
    return self.version == "rand" or self.eot_iter > 1

  def attack(self, name: str) -> registry.Attack:
    """Attack ``name`` of the cascade, built from the attack registry with
    this configuration's hyper-parameters."""
    common = dict(name=name, eps=self.eps, norm=self.norm)
    if name.startswith("apgd"):
      params = dict(common, steps=self.apgd_steps, rho=self.apgd_rho,
                    eot_iter=self.eot_iter, restarts=self.apgd_restarts)
      if name == "apgd-t":
        params["n_target_classes"] = self.n_target_classes
      return registry.build(params)
    if name == "fab-t":
      return registry.build(common, steps=self.fab_steps,
                            n_target_classes=self.n_target_classes)
    if name == "square":
      return registry.build(common, n_queries=self.square_queries,
                            p_init=self.square_p_init)
    return registry.build(common)

  def validated(self) -> "AutoAttackConfig":
    """Self, or a one-line ConfigError naming the bad value and the fix."""
    checks.check_eps(self.eps)
    checks.check_choice("norm", self.norm, NORMS)
    checks.check_choice("version", self.version, tuple(VERSIONS) + ("custom",))
    if self.version == "custom":
      if not self.attacks:
        raise ConfigError("version='custom' needs attacks, e.g. "
                          "attacks=('apgd-ce', 'square')")
      for name in self.attacks:
        checks.check_choice("attack", name, ATTACKS)
    elif self.attacks:
      raise ConfigError(f"attacks={list(self.attacks)} only applies to "
                        f"version='custom' (got version={self.version!r})")
    for name in ("apgd_steps", "apgd_restarts", "eot_iter",
                 "n_target_classes", "fab_steps", "square_queries"):
      if int(getattr(self, name)) < 1:
        raise ConfigError(f"autoattack {name} must be >= 1, got "
                          f"{getattr(self, name)}")
    return self


def config_for(version: str = "standard", **overrides) -> AutoAttackConfig:
  """The reference settings of ``version``, with ``overrides`` applied."""
  if version == "rand":
    overrides.setdefault("eot_iter", 20)
  return AutoAttackConfig(version=version, **overrides).validated()


@dataclasses.dataclass
class AutoAttackResult:
  """What the cascade found. Accuracies are fractions in [0, 1].

  ``x_adv [N, H, W, C]`` holds the adversarial example of every broken point
  and the clean image of every robust one; ``robust [N]`` is True where no
  attack succeeded (and the point was classified correctly).
  """
  clean_acc: float
  robust_acc: float
  by_attack: list[dict[str, Any]]
  x_adv: np.ndarray
  robust: np.ndarray
  clean_correct: np.ndarray
  max_perturbation: float
  seconds: float

  def summary(self, config: AutoAttackConfig) -> dict[str, Any]:
    """The JSON-ready report: the numbers of ``report.json``."""
    return {
        "clean_acc": self.clean_acc,
        "robust_acc": self.robust_acc,
        "robust_acc_after": {a["attack"]: a["robust_acc"]
                             for a in self.by_attack},
        "by_attack": self.by_attack,
        "eps": config.eps, "norm": config.norm, "version": config.version,
        "attacks": list(config.attack_list()),
        "num_examples": int(self.robust.shape[0]),
        "max_perturbation": self.max_perturbation,
        "attack_time_s": round(self.seconds, 1),
    }


class _Compiled:
  """Jitted init / chunk / finish functions of one attack, cached by shape."""

  def __init__(self, mesh, init, chunk, finish):
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    # (variables, x, y, target, keys) -> state
    self.init = jax.jit(init, in_shardings=(rep, bat, bat, bat, bat),
                        out_shardings=bat)
    # (variables, state, x, y, target, keys, start) -> state
    self.chunk = jax.jit(chunk, in_shardings=(rep, bat, bat, bat, bat, bat,
                                              rep),
                         out_shardings=bat, donate_argnums=(1,))
    # (state, x) -> (x_adv, robust)
    self.finish = jax.jit(finish, in_shardings=(bat, bat),
                          out_shardings=bat)


# Forward passes of the driver itself (the clean pass, the fresh checks and
# the final re-evaluation) draw their keys from this branch of the seed's
# key; the attacks use branches 0, 1, ... (their position in the cascade).
_FORWARD_STREAM = 2 ** 31 - 1


def _model(apply_fn: ApplyFn, variables, randomised: bool
           ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``(x [B, ...], keys [B]) -> logits [B, K]``, as the attacks call it."""
  if randomised:
    return apgd_lib.per_example(lambda z, k: apply_fn(variables, z, k))
  # A deterministic model ignores its key: one batched call with a fixed
  # key keeps the compiled program (and its float results) as plain as the
  # model itself.
  return lambda z, keys: apply_fn(variables, z, jax.random.key(0))


def _point_keys(pass_key: jax.Array, index: np.ndarray, mesh) -> jax.Array:
  """``[B]`` keys ``fold_in(pass_key, index[b])``, sharded like the batch."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(
      pass_key, jnp.asarray(index))
  return jax.device_put(keys, sharding.batch_sharded(mesh))


@functools.lru_cache(maxsize=32)
def _build(name: str, cfg: AutoAttackConfig, apply_fn: ApplyFn, mesh,
           chunk_size: int
           ) -> tuple[_Compiled, list[tuple[int, int]], registry.Stepwise]:
  """The compiled pieces of attack ``name`` (from the attack registry's
  chunked form), its chunk plan, and the chunked form itself.

  Cached, so attacking several checkpoints of one model (same ``apply_fn``
  object) compiles each attack once per batch shape.
  """
  model = functools.partial(_model, apply_fn, randomised=cfg.randomised)
  sw = cfg.attack(name).stepwise()

  def init(variables, x, y, target, keys):
    return sw.init(model(variables), x, y, target, keys)

  def chunk(variables, state, x, y, target, keys, start, count):
    step = sw.make_step(model(variables), x, y, target, keys)
    return it.run_steps(step, state, start, count)

  plan = it.chunk_plan(sw.steps, chunk_size)
  count = plan[0][1]
  compiled = _Compiled(
      mesh, init,
      lambda v, s, x, y, t, k, start: chunk(v, s, x, y, t, k, start, count),
      sw.finish)
  return compiled, plan, sw


def _round_up_coarse(count: int, bits: int = 3) -> int:
  """``count`` rounded up to ``bits`` significant binary digits.

  The values form a ladder with ``2 ** (bits - 1)`` steps per doubling (for
  3 bits: ..., 16, 20, 24, 28, 32, 40, 48, 56, 64, ...), so rounding up pads
  by less than a quarter of ``count`` while the number of distinct values,
  and so of compiled batch shapes, stays small.
  """
  shift = max(count.bit_length() - bits, 0)
  return -(-count >> shift) << shift


def _batch_plan(remaining: int, batch_size: int, n_devices: int
                ) -> tuple[int, int]:
  """``(batches, size)``: ``remaining`` points in ``batches`` padded batches
  of ``size`` points each.

  The points are split into as few batches as ``batch_size`` allows, of
  equal share, and each share is padded up to a multiple of ``n_devices``
  whose per-device part lies on the ladder of ``_round_up_coarse``. A
  compiled program's cost grows with its batch and PyTorch's reference runs
  exactly the points still robust, so padding is kept under a quarter of
  the points (powers of two would pad up to a half); the ladder keeps the
  shapes, and so the recompiles, few as the cascade shrinks.
  """
  batches = -(-remaining // batch_size)
  per_device = -(-remaining // (batches * n_devices))
  size = min(batch_size, n_devices * _round_up_coarse(per_device))
  return -(-remaining // size), size


def run_autoattack(apply_fn: ApplyFn, variables: Any, images: np.ndarray,
                   labels: np.ndarray, config: AutoAttackConfig, *,
                   mesh=None, batch_size: int = 500,
                   chunk_size: int = DEFAULT_CHUNK_SIZE,
                   indices: np.ndarray | None = None,
                   on_attack: Callable[[dict[str, Any]], None] | None = None
                   ) -> AutoAttackResult:
  """Runs the AutoAttack cascade on ``images``.

  Args:
    apply_fn: ``(variables, x [B, H, W, C], key) -> logits [B, C]`` in
      inference mode (BatchNorm running statistics); deterministic models
      ignore ``key``. With ``config.randomised`` it is called per example
      (``B = 1``) and must draw all its randomness from ``key``.
    variables: the model's variables (params and batch_stats).
    images: ``[N, H, W, C]`` float in [0, 1], or uint8 (divided by 255).
    labels: ``[N]`` int labels.
    config: an ``AutoAttackConfig`` (``config_for(version, ...)``).
    mesh: the device mesh (default: every device).
    batch_size: the most points per compiled batch; a multiple of the
      device count.
    chunk_size: iterations unrolled per compiled call (every attack).
    indices: ``[N]`` each point's index in its dataset (keys the per-point
      randomness of the attacks and, for a randomised model, of every
      forward pass); default ``arange(N)``.
    on_attack: called after each attack with its row of ``by_attack``.

  Returns:
    An ``AutoAttackResult``.
  """
  cfg = config.validated()
  start_time = time.time()
  mesh = mesh if mesh is not None else sharding.make_mesh()
  n_dev = mesh.devices.size
  sharding.check_batch_divisible(batch_size, mesh)
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  labels = np.asarray(labels).astype(np.int32)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ConfigError(f"autoattack needs images [N, H, W, C] and labels [N], "
                      f"got {images.shape} and {labels.shape}")
  if images.min() < 0.0 or images.max() > 1.0:
    raise ConfigError("autoattack images must lie in [0, 1]; normalisation "
                      "belongs inside the model")
  n = images.shape[0]
  indices = np.arange(n, dtype=np.int32) if indices is None else (
      np.asarray(indices, np.int32))
  variables = sharding.put_replicated(variables, mesh)
  root = jax.random.key(cfg.seed)
  bat = sharding.batch_sharded(mesh)
  forward_root = jax.random.fold_in(root, _FORWARD_STREAM)

  # 1. Clean pass: predictions and the class ranking the targets come from.
  # (logits_fn: the fresh check of each batch an attack returns.)
  logits_fn = jax.jit(
      lambda v, x, keys: _model(apply_fn, v, cfg.randomised)(x, keys),
      in_shardings=(sharding.replicated(mesh), bat, bat), out_shardings=bat)
  logits_step = _logits_step(apply_fn, cfg.randomised, mesh)
  clean_logits = _logits(logits_step, variables, images, indices,
                         jax.random.fold_in(forward_root, 0), batch_size,
                         mesh)
  num_classes = clean_logits.shape[1]
  ranking = np.argsort(-clean_logits, axis=1, kind="stable")
  clean_correct = ranking[:, 0] == labels
  robust = clean_correct.copy()
  x_adv = images.copy()
  by_attack = []

  for position, name in enumerate(cfg.attack_list()):
    t0 = time.time()
    compiled, plan, sw = _build(name, cfg, apply_fn, mesh, chunk_size)
    if sw.targeted:
      n_targets = min(cfg.n_target_classes, num_classes - 1)
      runs = [(r, ranking[:, r]) for r in range(1, n_targets + 1)]
    else:
      runs = [(r, labels) for r in range(sw.restarts)]
    for run_id, targets in runs:
      todo = np.flatnonzero(robust)
      if todo.size == 0:
        break
      key = jax.random.fold_in(jax.random.fold_in(root, position), run_id)
      check_key = jax.random.fold_in(jax.random.fold_in(
          forward_root, position + 1), run_id)
      _, size = _batch_plan(todo.size, batch_size, n_dev)
      for lo in range(0, todo.size, size):
        rows = todo[lo:lo + size]
        pad = np.concatenate([rows, np.full(size - rows.size, rows[0])])
        x = _put(images[pad], mesh)
        y = _put(labels[pad], mesh)
        target = _put(targets[pad].astype(np.int32), mesh)
        keys = _point_keys(key, indices[pad], mesh)
        state = compiled.init(variables, x, y, target, keys)
        for i, (start, _) in enumerate(plan):
          state = compiled.chunk(variables, state, x, y, target, keys,
                                 jnp.int32(start))
          if sw.still_robust is not None and i % 8 == 7 and not bool(
              jnp.any(sw.still_robust(state)[:rows.size])):
            break  # every point of the batch is misclassified
        batch_adv, _ = compiled.finish(state, x)
        batch_adv = np.asarray(batch_adv)[:rows.size]
        # A point is broken only if a fresh forward pass misclassifies it.
        pred = np.argmax(np.asarray(logits_fn(
            variables, _put(_pad_to(batch_adv, size), mesh),
            _point_keys(check_key, indices[pad], mesh)))[:rows.size], -1)
        broken = pred != labels[rows]
        _check_in_ball(batch_adv[broken], images[rows][broken], cfg)
        x_adv[rows[broken]] = batch_adv[broken]
        robust[rows[broken]] = False
    row = {"attack": name, "robust_acc": float(robust.mean()),
           "robust_points": int(robust.sum()),
           "seconds": round(time.time() - t0, 1)}
    by_attack.append(row)
    if on_attack is not None:
      on_attack(row)

  final_key = jax.random.fold_in(forward_root, len(cfg.attack_list()) + 1)
  max_pert = _final_checks(variables, logits_step, images, labels, indices,
                           final_key, x_adv, robust, clean_correct, cfg, mesh,
                           batch_size)
  return AutoAttackResult(
      clean_acc=float(clean_correct.mean()), robust_acc=float(robust.mean()),
      by_attack=by_attack, x_adv=x_adv, robust=robust,
      clean_correct=clean_correct, max_perturbation=max_pert,
      seconds=time.time() - start_time)


def _put(a: np.ndarray, mesh) -> jax.Array:
  return jax.device_put(a, sharding.batch_sharded(mesh))


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
  if a.shape[0] == size:
    return a
  return np.concatenate([a, np.repeat(a[:1], size - a.shape[0], 0)])


@functools.lru_cache(maxsize=8)
def _logits_step(apply_fn: ApplyFn, randomised: bool, mesh) -> data.Step:
  """The compiled ``data`` step of the clean pass and the final check:
  ``((variables, index), batch, pass_key) -> {"logits"}``, row ``b`` keyed
  by ``fold_in(pass_key, index[batch["index"][b]])``."""

  def step(tree, batch, key):
    variables, point_index = tree
    keys = data.example_keys(key, point_index[batch["index"]])
    return {"logits": _model(apply_fn, variables, randomised)(
        data.to_float(batch["image"]), keys)}

  return data.compile_step(step, mesh)


def _logits(step: data.Step, variables, a: np.ndarray, index: np.ndarray,
            pass_key: jax.Array, size: int, mesh) -> np.ndarray:
  """Logits ``[N, K]`` of every row of ``a`` ``[N, H, W, C]`` (row ``n``
  keyed by ``fold_in(pass_key, index[n])``), through ``data.collect_rows``
  in padded batches of ``size``."""
  split = data.ArraySplit(np.asarray(a, np.float32),
                          np.zeros(a.shape[0], np.int32), 0, "autoattack")
  return data.collect_rows(step, (variables, jnp.asarray(index)), split,
                           mesh, batch_size=size, key=pass_key)["logits"]


def _perturbation(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
  d = (x_adv - x).reshape(x.shape[0], -1).astype(np.float64)
  return np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))


def _check_in_ball(x_adv: np.ndarray, x: np.ndarray,
                   cfg: AutoAttackConfig) -> None:
  if x_adv.size == 0:
    return
  worst = float(_perturbation(x_adv, x, cfg.norm).max())
  if worst > cfg.eps + BALL_TOLERANCE or x_adv.min() < 0 or x_adv.max() > 1:
    raise AssertionError(
        f"an attack returned a point outside the {cfg.norm} ball of radius "
        f"{cfg.eps} or outside [0, 1] (perturbation {worst}); this is a bug")


def _final_checks(variables, logits_step, images, labels, indices, pass_key,
                  x_adv, robust, clean_correct, cfg, mesh, batch_size
                  ) -> float:
  """Re-evaluates every final point; returns the largest perturbation.

  The reference prints the same checks: the perturbation bound, [0, 1], and
  that the robust accuracy recomputed on the returned points agrees (which
  a randomised model need not: its re-evaluation draws fresh noise).
  """
  preds = np.argmax(_logits(logits_step, variables, x_adv, indices,
                            pass_key, batch_size, mesh), -1)
  if np.isnan(x_adv).any():
    raise AssertionError("NaN in the adversarial examples; this is a bug")
  _check_in_ball(x_adv, images, cfg)
  still_correct = preds == labels
  # Robust points hold their clean image, so they must still be correct;
  # broken points must be misclassified (or were misclassified clean).
  disagree = (still_correct != robust) & clean_correct
  if disagree.any() and not cfg.randomised:
    raise AssertionError(
        f"{int(disagree.sum())} points changed prediction when re-evaluated; "
        "the model is not deterministic in inference mode (use "
        "version='rand' for randomised models)")
  return float(_perturbation(x_adv, images, cfg.norm).max())
