"""FGSM, PGD and the projected-gradient-ascent engine they share.

One module of about 480 lines on purpose: the engine, the two attacks and
their registered forms share the start point, projection and step code,
and reading them together is how one checks they agree.

Attacks are pure functions of a *logits function* ``logits_fn(x) -> [B, C]``,
so they know nothing about Flax: the caller closes over params and BatchNorm
statistics in inference mode, e.g.
``logits_fn = lambda x: model.apply(variables, x, train=False)``. Attacks
therefore never update ``batch_stats``.

Conventions:
  * Images are NHWC (any ``[B, ...]`` shape works) floats in [0, 1]; ``eps``
    and ``step_size`` are in pixel units (8/255, not 0.031).
  * Every iterate, including the random start, is projected onto the eps
    ball around ``x`` and clipped to [0, 1].
  * All hyper-parameters are Python values checked at trace time, so the
    attacks run inside the caller's ``jax.jit`` and bad values raise
    ``ConfigError`` before anything compiles.
  * Step and restart loops are unrolled Python loops: XLA:CPU runs
    ``lax.fori_loop`` about 6x slower on this workload (docs/design.md).
    Compile time grows with ``steps * restarts``, which is fine for the short
    loops of training (PGD-10) and evaluation (PGD-20..100).
  * The returned examples are ``stop_gradient``-ed: a training loss
    differentiated w.r.t. params never back-propagates into the attack.
  * Gradients are taken of the objective summed over the batch, which is the
    per-example gradient as long as ``logits_fn`` treats examples
    independently (true for eval-mode BatchNorm, false for train-mode BN).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from robustjax.attacks import checks, registry
from robustjax.attacks.checks import NORMS
from robustjax.attacks.losses import (LOSSES, cross_entropy, cw_margin,
                                      kl_divergence, targeted_dlr)
from robustjax.errors import ConfigError

LogitsFn = Callable[[jax.Array], jax.Array]
ObjectiveFn = Callable[[jax.Array], jax.Array]

INITS = ("uniform", "normal", "zero")
# x + TRADES_INIT_SCALE * N(0, 1) is the start point of TRADES
# (yaodongyu/TRADES trades.py); the default for init='normal'.
TRADES_INIT_SCALE = 0.001
# FGSM-RS step of Wong et al. 2020 ("Fast is better than free"): alpha = 1.25
# eps (10/255 for eps = 8/255); larger steps lead to catastrophic overfitting.
FGSM_RS_STEP_RATIO = 1.25


# ---------------------------------------------------------------------------
# Geometry of the threat models.


def _per_example_norm(v: jax.Array) -> jax.Array:
  """L2 norm over all non-batch axes, shape ``[B, 1, ..., 1]``."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)),
                          keepdims=True))


def _safe_normalize(v: jax.Array) -> jax.Array:
  """``v / ||v||_2`` per example; exactly 0 where ``v`` is 0 (no NaN)."""
  n = _per_example_norm(v)
  return v / jnp.where(n > 0, n, 1.0)


def _project(x_adv: jax.Array, x: jax.Array, eps: float,
             norm: str) -> jax.Array:
  """Projects onto the eps ball around ``x``, then clips to [0, 1].

  Clipping after the ball projection never leaves the ball: ``x`` is in
  [0, 1], so clipping moves each coordinate towards ``x``.
  """
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = _per_example_norm(delta)
    # Rescale only the examples outside the ball; the inner `where` keeps the
    # division finite for delta = 0 (and for eps = 0).
    delta = delta * jnp.where(n > eps, eps / jnp.where(n > 0, n, 1.0), 1.0)
  return jnp.clip(x + delta, 0.0, 1.0)


def _ascent_direction(g: jax.Array, norm: str) -> jax.Array:
  """The steepest-ascent unit step for the norm: sign(g) or g / ||g||_2."""
  if norm == "linf":
    return jnp.sign(g)
  return _safe_normalize(g)


# ---------------------------------------------------------------------------
# Randomness: one key for the batch, or one key per example. Per-example keys
# (a typed key array of shape [B], e.g. fold_in(root, example_index)) make an
# example's random start independent of which batch or device it lands on.


def _is_per_example(key: jax.Array | None, x: jax.Array) -> bool:
  if key is None or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return False  # raw uint32 keys are always one key for the batch
  if key.ndim == 0:
    return False
  if key.shape != x.shape[:1]:
    raise ConfigError(
        f"key must be one PRNG key or a key array of shape [B]={x.shape[:1]}"
        f" (one per example), got shape {tuple(key.shape)}")
  return True


def _sample(sampler: Callable[[jax.Array, tuple[int, ...]], jax.Array],
            key: jax.Array, shape: tuple[int, ...], per_example: bool
            ) -> jax.Array:
  """``sampler(key, shape)``, or one ``shape[1:]`` draw per example key."""
  if per_example:
    return jax.vmap(lambda k: sampler(k, shape[1:]))(key)
  return sampler(key, shape)


def _split2(key: jax.Array, per_example: bool) -> tuple[jax.Array, jax.Array]:
  if per_example:
    keys = jax.vmap(jax.random.split)(key)
    return keys[:, 0], keys[:, 1]
  k1, k2 = jax.random.split(key)
  return k1, k2


def _fold_in(key: jax.Array, data: int, per_example: bool) -> jax.Array:
  if per_example:
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(key)
  return jax.random.fold_in(key, data)


def _initial_point(x: jax.Array, key: jax.Array | None, eps: float,
                   norm: str, init: str, init_scale: float) -> jax.Array:
  """The start point, already projected and clipped."""
  if init == "zero":
    return x
  per_example = _is_per_example(key, x)
  normal = lambda k, s: jax.random.normal(k, s, x.dtype)  # noqa: E731
  if init == "normal":
    # TRADES starts at x + 0.001 N(0, 1) without clipping; we project it like
    # every other iterate so the first gradient is taken on a valid image.
    noise = _sample(normal, key, x.shape, per_example)
    return _project(x + init_scale * noise, x, eps, norm)
  if norm == "linf":
    delta = _sample(lambda k, s: jax.random.uniform(k, s, x.dtype, -eps, eps),
                    key, x.shape, per_example)
  else:
    # Uniform in the L2 ball: a uniform direction (normalised Gaussian) times
    # a radius eps * U^(1/d), d the input dimension. In image dimensions this
    # radius is close to eps, i.e. near the sphere, as in Madry et al.'s
    # robustness library.
    k_dir, k_rad = _split2(key, per_example)
    direction = _safe_normalize(_sample(normal, k_dir, x.shape, per_example))
    d = math.prod(x.shape[1:])
    u = _sample(lambda k, s: jax.random.uniform(k, s, x.dtype), k_rad,
                (x.shape[0],) + (1,) * (x.ndim - 1), per_example)
    delta = direction * (eps * u ** (1.0 / d))
  return _project(x + delta, x, eps, norm)


# ---------------------------------------------------------------------------
# The engine.


def projected_gradient_ascent(objective_fn: ObjectiveFn,
                              x: jax.Array,
                              *,
                              key: jax.Array | None,
                              eps: float,
                              step_size: float,
                              steps: int,
                              norm: str = "linf",
                              init: str = "uniform",
                              init_scale: float | None = None) -> jax.Array:
  """Maximises a per-example objective over the eps ball around ``x``.

  The generic engine behind FGSM, PGD and the inner maximisations of the
  training objectives (TRADES maximises a KL divergence, not a label loss).

  Args:
    objective_fn: ``x_adv [B, ...] -> [B]`` objective to MAXIMISE per example;
      the engine differentiates its sum over the batch.
    x: ``[B, H, W, C]`` (any ``[B, ...]``) float images in [0, 1].
    key: PRNG key for the start point, or a typed key array of shape
      ``[B]`` (one key per example: an example's start then does not depend
      on its batch or device); may be None when ``init='zero'``.
    eps: radius of the ball, in [0, 1] pixel units.
    step_size: Linf: ``x + step_size * sign(g)``; L2:
      ``x + step_size * g / ||g||_2`` per example.
    steps: number of gradient steps, unrolled (0 returns the start point).
    norm: ``'linf'`` or ``'l2'``.
    init: ``'uniform'`` (uniform in the ball), ``'normal'``
      (``x + init_scale * N(0, 1)``) or ``'zero'`` (start at ``x``).
    init_scale: standard deviation for ``init='normal'``; defaults to 0.001,
      the TRADES value.

  Returns:
    ``x_adv``, same shape and dtype as ``x``, within the ball and [0, 1],
    with ``stop_gradient`` applied.
  """
  eps = checks.check_eps(eps)
  step_size = checks.check_step_size(step_size)
  steps = checks.static_int("steps", steps, 0)
  norm = checks.check_choice("norm", norm, NORMS)
  init = checks.check_choice("init", init, INITS)
  if init_scale is None:
    init_scale = TRADES_INIT_SCALE
  init_scale = checks.static_float("init_scale", init_scale)
  if init != "zero" and key is None:
    raise ConfigError(f"init={init!r} needs a PRNG key; pass key= or "
                      f"use init='zero'")
  x = checks.check_images(x)

  x_adv = _initial_point(x, key, eps, norm, init, init_scale)
  for _ in range(steps):  # unrolled on purpose, see the module docstring
    x_adv = _ascent_step(objective_fn, x_adv, x, eps, step_size, norm)
  return jax.lax.stop_gradient(x_adv.astype(x.dtype))


def _ascent_step(objective_fn: ObjectiveFn, x_adv: jax.Array, x: jax.Array,
                 eps: float, step_size: float, norm: str) -> jax.Array:
  """One iteration of the engine: a steepest-ascent step, then projection.

  The one place the step is written, so the unrolled attack and its
  chunked form (``_pgd_chunked``) take the same steps.
  """
  g = jax.grad(lambda z: jnp.sum(objective_fn(z)))(x_adv)
  return _project(x_adv + step_size * _ascent_direction(g, norm), x, eps,
                  norm)


# ---------------------------------------------------------------------------
# Label attacks.


def _success(logits: jax.Array, y: jax.Array,
             target: jax.Array | None) -> jax.Array:
  pred = jnp.argmax(logits, axis=-1)
  return pred != y if target is None else pred == target


def attack_success(logits_fn: LogitsFn,
                   x_adv: jax.Array,
                   y: jax.Array,
                   target: jax.Array | None = None) -> jax.Array:
  """Whether each adversarial example fools the model.

  Args:
    logits_fn: ``[B, ...] -> [B, C]`` in inference mode.
    x_adv: ``[B, ...]`` adversarial images.
    y: ``[B]`` int true labels.
    target: optional ``[B]`` int target classes.

  Returns:
    ``[B]`` bool: misclassified (untargeted) or classified as ``target``.
  """
  return _success(logits_fn(x_adv), y, target)


def _label_objective(loss: str, y: jax.Array, targeted: bool,
                     target: jax.Array | None
                    ) -> Callable[[jax.Array], jax.Array]:
  """``logits [B, C] -> [B]`` objective that the attack maximises."""
  if not targeted:
    fn = LOSSES[loss]
    return lambda logits: fn(logits, y)
  # Targeted: move towards `target`. CE and CW are minimised towards the
  # target (maximise their negation); targeted DLR is already written as a
  # quantity to maximise (APGD-T).
  if loss == "ce":
    return lambda logits: -cross_entropy(logits, target)
  if loss == "cw":
    return lambda logits: -cw_margin(logits, target)  # z_t - max_{j!=t} z_j
  return lambda logits: targeted_dlr(logits, y, target)


def fgsm(logits_fn: LogitsFn,
         x: jax.Array,
         y: jax.Array,
         *,
         eps: float,
         key: jax.Array | None = None,
         random_start: bool = False,
         step_size: float | None = None,
         loss: str = "ce") -> jax.Array:
  """Fast Gradient Sign Method, optionally with a random start (FGSM-RS).

  Plain FGSM: ``clip(x + step_size * sign(grad), 0, 1)`` with
  ``step_size = eps``. FGSM-RS (Wong et al. 2020): start uniformly in the Linf
  ball, take one step of ``step_size`` (default ``1.25 * eps``), project back.

  Args:
    logits_fn: ``[B, ...] -> [B, C]`` in inference mode.
    x: ``[B, H, W, C]`` float images in [0, 1].
    y: ``[B]`` int labels.
    eps: Linf radius in [0, 1] pixel units.
    key: PRNG key, required when ``random_start``.
    random_start: FGSM-RS when True.
    step_size: defaults to ``eps`` (FGSM) or ``1.25 * eps`` (FGSM-RS).
    loss: ``'ce'``, ``'cw'`` or ``'dlr'``.

  Returns:
    ``x_adv``, same shape and dtype as ``x``, ``stop_gradient``-ed.
  """
  eps = checks.check_eps(eps)
  loss = checks.check_choice("loss", loss, tuple(LOSSES))
  if random_start and key is None:
    raise ConfigError("fgsm(random_start=True) needs a PRNG key; pass key=")
  if step_size is None:
    step_size = FGSM_RS_STEP_RATIO * eps if random_start else eps
  x = checks.check_images(x)
  y = checks.check_labels("y", y, x)
  objective = _label_objective(loss, y, False, None)
  return projected_gradient_ascent(
      lambda z: objective(logits_fn(z)), x, key=key, eps=eps,
      step_size=step_size, steps=1, norm="linf",
      init="uniform" if random_start else "zero")


def pgd(logits_fn: LogitsFn,
        x: jax.Array,
        y: jax.Array,
        *,
        key: jax.Array | None,
        eps: float,
        step_size: float,
        steps: int,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        targeted: bool = False,
        target: jax.Array | None = None) -> jax.Array:
  """Projected Gradient Descent (Madry et al. 2018), Linf or L2.

  With ``restarts > 1``, restart ``r`` starts from the key
  ``jax.random.fold_in(key, r)`` (so restart 0 is exactly the
  ``restarts=1`` attack), and each example keeps its worst case: the first
  restart that succeeds (misclassified, or classified as ``target``), else
  the restart with the highest objective. Each extra restart costs one extra
  forward pass for this selection; ``restarts=1`` costs none.

  Args:
    logits_fn: ``[B, ...] -> [B, C]`` in inference mode.
    x: ``[B, H, W, C]`` float images in [0, 1].
    y: ``[B]`` int true labels.
    key: PRNG key, or a typed key array of shape ``[B]`` (one per example);
      may be None when ``random_start=False``.
    eps: radius in [0, 1] pixel units.
    step_size: step per iteration (see ``projected_gradient_ascent``).
    steps: iterations per restart (unrolled).
    norm: ``'linf'`` or ``'l2'``.
    random_start: start uniformly in the ball, else at ``x``.
    restarts: independent runs, >= 1.
    loss: ``'ce'``, ``'cw'`` or ``'dlr'``. Untargeted attacks maximise it.
    targeted: move towards ``target``: minimise CE(logits, target), maximise
      ``z_t - max_{j != t} z_j`` (cw), or maximise ``targeted_dlr`` (dlr).
    target: ``[B]`` int target classes, required iff ``targeted``.

  Returns:
    ``x_adv``, same shape and dtype as ``x``, ``stop_gradient``-ed.
  """
  # Validate everything up front, before any tracing of logits_fn.
  eps = checks.check_eps(eps)
  step_size = checks.check_step_size(step_size)
  steps = checks.static_int("steps", steps, 0)
  restarts = checks.static_int("restarts", restarts, 1)
  norm = checks.check_choice("norm", norm, NORMS)
  loss = checks.check_choice("loss", loss, tuple(LOSSES))
  if targeted and target is None:
    raise ConfigError("pgd(targeted=True) needs target= (int [B] classes)")
  if not targeted and target is not None:
    raise ConfigError("pgd got target= but targeted=False; set targeted=True "
                      "or drop target")
  if random_start and key is None:
    raise ConfigError("pgd(random_start=True) needs a PRNG key; pass key=")
  x = checks.check_images(x)
  y = checks.check_labels("y", y, x)
  if targeted:
    target = checks.check_labels("target", target, x)

  objective = _label_objective(loss, y, targeted, target)
  init = "uniform" if random_start else "zero"

  per_example = _is_per_example(key, x)
  best_x = best_success = best_value = None
  for r in range(restarts):  # unrolled, like the steps
    x_r = projected_gradient_ascent(
        lambda z: objective(logits_fn(z)), x,
        key=None if key is None else _fold_in(key, r, per_example), eps=eps,
        step_size=step_size, steps=steps, norm=norm, init=init)
    if restarts == 1:
      return x_r
    logits = logits_fn(x_r)
    success = _success(logits, y, target)
    value = objective(logits)
    if best_x is None:
      best_x, best_success, best_value = x_r, success, value
      continue
    # An example already fooled keeps its first successful restart; an
    # unfooled one takes this restart if it succeeds or scores higher.
    take = ~best_success & (success | (value > best_value))
    best_x = jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), x_r, best_x)
    best_value = jnp.where(take, value, best_value)
    best_success = best_success | success
  return jax.lax.stop_gradient(best_x)


# ---------------------------------------------------------------------------
# The registered forms (robustjax.attacks.registry): the names configs use.

PGD_LOSSES = tuple(LOSSES) + ("kl",)


def _check_pgd(p: dict[str, Any]) -> None:
  checks.check_eps(p["eps"])
  checks.check_step_size(p["step_size"])
  checks.static_int("steps", p["steps"], 0)
  checks.static_int("restarts", p["restarts"], 1)
  checks.check_choice("norm", p["norm"], NORMS)
  checks.check_choice("loss", p["loss"], PGD_LOSSES)
  checks.check_choice("start", p["start"], INITS)
  if (p["loss"] == "kl" or p["start"] == "normal") and p["restarts"] != 1:
    raise ConfigError("pgd with loss='kl' or start='normal' (the TRADES / "
                      "MART inner maximisation) runs once; set restarts=1")


def _pgd_label(p: dict[str, Any]) -> str:
  restarts = int(p["restarts"])
  return f"pgd{int(p['steps'])}" + (f"x{restarts}" if restarts > 1 else "")


def _named_objective(logits_fn: LogitsFn, loss: str, y: jax.Array,
                     clean: jax.Array | None) -> ObjectiveFn:
  """The per-example objective ``pgd`` by name maximises: for
  ``loss='kl'`` ``KL(clean || f(z))`` from the clean logits ``clean``
  ``[B, C]``, else the untargeted label loss of ``y`` ``[B]``."""
  if loss == "kl":
    return lambda z: kl_divergence(clean, logits_fn(z))
  label_objective = _label_objective(loss, y, False, None)
  return lambda z: label_objective(logits_fn(z))


def _pgd_chunked(*, eps: float, step_size: float, steps: int,
                 restarts: int, norm: str, loss: str, start: str
                 ) -> registry.Chunked | None:
  """``pgd`` by name as init / step / output, for evaluation's compiled
  chunks: the same start from the same keys and the same steps as
  ``pgd_attack``. None with ``restarts > 1`` (that keeps the best restart,
  which needs every run: it runs as one program)."""
  if restarts != 1:
    return None
  inner_maximisation = loss == "kl" or start == "normal"

  def init(logits_fn, x, y, keys):
    state = {}
    if loss == "kl":
      state["clean"] = jax.lax.stop_gradient(logits_fn(x))
    # pgd_attack hands the TRADES / MART maximisation its key as given and
    # pgd() folds in the restart number (0) first.
    if not inner_maximisation and keys is not None:
      keys = _fold_in(keys, 0, _is_per_example(keys, x))
    state["x_adv"] = _initial_point(x, keys, eps, norm, start,
                                    TRADES_INIT_SCALE)
    return state

  def make_step(logits_fn, x, y, keys):
    del keys  # only the start is random

    def step(state, i):
      del i
      objective = _named_objective(logits_fn, loss, y, state.get("clean"))
      x_adv = _ascent_step(objective, state["x_adv"], x, eps, step_size,
                           norm)
      return dict(state, x_adv=x_adv)
    return step

  def output(state, x):
    return jax.lax.stop_gradient(state["x_adv"].astype(x.dtype))

  return registry.Chunked(init, make_step, output, steps)


@registry.register(
    "pgd", defaults=dict(eps=8 / 255, step_size=2 / 255, steps=10,
                         restarts=1, norm="linf", loss="ce", start="uniform"),
    label=_pgd_label, check=_check_pgd, chunked=_pgd_chunked)
def pgd_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
               key: jax.Array | None, *, eps: float, step_size: float,
               steps: int, restarts: int, norm: str, loss: str,
               start: str) -> jax.Array:
  """``pgd`` by name. ``start``: ``'uniform'`` in the ball, ``'zero'`` (at
  ``x``) or ``'normal'`` (``x + 0.001 N(0, I)``, TRADES's and MART's start).
  ``loss='kl'`` maximises ``KL(f(x) || f(x_adv))`` from the clean
  prediction, label-free: TRADES's inner maximisation."""
  if loss == "kl" or start == "normal":
    # The TRADES / MART inner maximisation: one run from the key as given.
    clean = jax.lax.stop_gradient(logits_fn(x)) if loss == "kl" else None
    objective = _named_objective(logits_fn, loss,
                                 checks.check_labels("y", y, x), clean)
    return projected_gradient_ascent(objective, x, key=key, eps=eps,
                                     step_size=step_size, steps=steps,
                                     norm=norm, init=start)
  return pgd(logits_fn, x, y, key=key, eps=eps, step_size=step_size,
             steps=steps, norm=norm, random_start=start == "uniform",
             restarts=restarts, loss=loss)


def _check_fgsm(p: dict[str, Any]) -> None:
  checks.check_eps(p["eps"])
  if p["step_size"] is not None:
    checks.check_step_size(p["step_size"])
  checks.check_choice("loss", p["loss"], tuple(LOSSES))
  checks.check_choice("start", p["start"], ("zero", "uniform"))


@registry.register(
    "fgsm", defaults=dict(eps=8 / 255, step_size=None, loss="ce",
                          start="zero"),
    label=lambda p: "fgsm" if p["start"] == "zero" else "fgsm-rs",
    check=_check_fgsm)
def fgsm_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                key: jax.Array | None, *, eps: float,
                step_size: float | None, loss: str, start: str) -> jax.Array:
  """``fgsm`` by name; ``start='uniform'`` is FGSM-RS (Wong et al. 2020),
  whose default step is ``1.25 * eps``."""
  return fgsm(logits_fn, x, y, eps=eps, key=key,
              random_start=start == "uniform", step_size=step_size,
              loss=loss)
