"""APGD (Croce & Hein 2020): auto-step-size PGD with momentum, CE or DLR.

Follows ``autopgd_base.py`` of fra31/auto-attack (and torchattacks' port):

  * start uniformly on the Linf sphere (``eps * t / max|t|``) or on the L2
    sphere, clipped to [0, 1]; the first step size is ``2 * eps``;
  * step ``z = P(x_k + eta * sign(g))`` (L2: ``g / ||g||``), then momentum
    ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))`` (no momentum
    at the first step);
  * checkpoints: the first after ``0.22 * steps`` iterations, then windows
    shrinking by ``0.03 * steps`` down to ``0.06 * steps``. At a checkpoint an
    example halves its step and restarts from its best point if the loss rose
    in at most ``rho = 0.75`` of the window's steps, or if the best loss did
    not improve since the last checkpoint and the step was not halved then;
  * the result is the last misclassified iterate (else the start point) and
    whether the example stayed robust.

Every quantity is per example. One quirk of the reference is kept on
purpose: its loss history starts as zeros, so the first window compares the
first loss with 0 (for CE, always an increase; for DLR, rarely).

``init_state`` and ``make_step`` take a keyed ``logits_fn(x [B, ...],
keys [B]) -> [B, K]``. Forward pass ``j`` of the attack (EOT sample ``e`` of
iteration ``i`` is ``j = i * eot_iter + e``, the start being iteration 0)
gets ``fold_in(keys[b], j)`` for example ``b``: every pass of a randomised
model draws fresh noise, and each example's noise comes from its own key, so
its result does not depend on the batch it is in. ``per_example`` turns a
single-key randomised model into such a function.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import checks, iterative as it, registry
from robustjax.attacks.losses import cross_entropy, dlr, targeted_dlr
from robustjax.attacks.checks import NORMS
from robustjax.errors import ConfigError

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75


def checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Where APGD checks its step size, and the window length at each check.

  Returns:
    ``(is_check [steps] bool, window [steps] int)``; ``window[i]`` is the
    number of iterations the check at ``i`` looks back over (0 elsewhere).
    For 100 steps the checks fall at iterations 21, 40, 56, 69, 79, 86, 92
    and 98 (windows 22, 19, 16, 13, 10, 7, 6, 6).
  """
  k = max(int(0.22 * steps), 1)
  k_min = max(int(0.06 * steps), 1)
  decrease = max(int(0.03 * steps), 1)
  is_check = np.zeros(steps, bool)
  window = np.zeros(steps, np.int32)
  counter = 0
  for i in range(steps):
    counter += 1
    if counter == k:
      is_check[i], window[i] = True, k
      counter = 0
      k = max(k - decrease, k_min)
  return is_check, window


def _eps_like(eps, x: jax.Array) -> jax.Array | float:
  """``eps`` as a scalar, or a per-example ``[B]`` radius broadcast over
  ``x [B, ...]``."""
  if np.ndim(eps) == 0:
    return eps
  return it.expand(jnp.asarray(eps, x.dtype), x)


def _project(z: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """The reference's projection onto the ball, then [0, 1]."""
  eps = _eps_like(eps, x)
  if norm == "linf":
    return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)
  d = z - x
  n = it.expand(it.l2_norm(d), d)
  return jnp.clip(x + d / (n + 1e-12) * jnp.minimum(eps, n + 1e-12), 0.0,
                  1.0)


def per_example(fn: Callable[[jax.Array, jax.Array], jax.Array]
                ) -> it.KeyedLogitsFn:
  """``(x [B, ...], keys [B]) -> [B, K]`` from a single-key model ``fn``.

  ``fn(x [1, ...], key) -> [1, K]`` is run on every example with that
  example's own key (under ``vmap``), so a randomised model's noise for an
  example depends on its key alone, never on its position in the batch or
  on the batch size. ``fn`` must draw all its randomness from ``key`` and
  must not mix examples (inference mode).
  """

  def logits(x: jax.Array, keys: jax.Array) -> jax.Array:
    return jax.vmap(lambda xi, ki: fn(xi[None], ki)[0])(x, keys)

  return logits


def _loss_fn(loss) -> Callable[[jax.Array, jax.Array, jax.Array],
                                    jax.Array]:
  if callable(loss):
    return loss  # (model output, y, target) -> [B]
  if loss == "ce":
    return lambda logits, y, t: cross_entropy(logits, y)
  if loss == "dlr":
    return lambda logits, y, t: dlr(logits, y)
  return targeted_dlr  # (logits, y, target)


def init_state(logits_fn: it.KeyedLogitsFn, x: jax.Array, y: jax.Array,
               keys: jax.Array, *, eps: float, norm: str, loss: str,
               target: jax.Array | None = None, eot_iter: int = 1
               ) -> it.State:
  """The random start and its loss and gradient: APGD's state at step 0
  (``eps`` and ``loss`` as in ``make_step``)."""
  radius = _eps_like(eps, x)
  if norm == "linf":
    t = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0,
                                              1.0))(keys)
    x_adv = x + radius * t / it.expand(it.linf_norm(t), t)
  else:
    t = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
    x_adv = x + radius * t / (it.expand(it.l2_norm(t), t) + 1e-12)
  x_adv = jnp.clip(x_adv, 0.0, 1.0)
  loss_i, grad, logits = _loss_and_grad(logits_fn, x_adv, y, target, keys,
                                        _loss_fn(loss), eot_iter, 0)
  batch = x.shape[0]
  return dict(
      x_adv=x_adv, x_adv_old=x_adv, grad=grad,
      x_best=x_adv, grad_best=grad, loss_best=loss_i,
      x_best_adv=x_adv, robust=jnp.argmax(logits, -1) == y,
      step_size=2.0 * jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,)),
      loss_prev=jnp.zeros((batch,), jnp.float32),
      n_increase=jnp.zeros((batch,), jnp.int32),
      loss_best_last_check=loss_i,
      reduced_last_check=jnp.ones((batch,), bool))


def _loss_and_grad(logits_fn, x_adv, y, target, keys, loss_fn, eot_iter,
                   salt):
  """Per-example loss ``[B]``, the EOT-averaged gradient, the last logits."""

  def total(z, key):
    out = logits_fn(z, key)
    per_example = loss_fn(out, y, target)
    # A model may return (logits, extra) for a callable loss; predictions
    # always come from the logits.
    return jnp.sum(per_example), (per_example,
                                  out[0] if isinstance(out, tuple) else out)

  grad_fn = jax.grad(total, has_aux=True)
  grad = jnp.zeros_like(x_adv)
  for e in range(eot_iter):
    # A key per example and per forward pass (see the module docstring).
    g, (loss_i, logits) = grad_fn(x_adv, it.fold_in_each(
        keys, salt * eot_iter + e))
    grad = grad + g
  return loss_i, grad / float(eot_iter), logits


def make_step(logits_fn: it.KeyedLogitsFn, x: jax.Array, y: jax.Array,
              keys: jax.Array, *, eps: float, norm: str, loss: str,
              steps: int, target: jax.Array | None = None,
              rho: float = 0.75, eot_iter: int = 1,
              schedule: tuple[jax.Array, jax.Array] | None = None
              ) -> Callable[[it.State, jax.Array], it.State]:
  """``step(state, i) -> state``: APGD iteration ``i`` (``i`` may be traced).

  ``eps`` is a scalar or a per-example ``[B]`` radius. ``loss`` is a name
  of ``APGD_LOSSES`` or a callable ``(output, y, target) -> [B]`` (then
  ``logits_fn`` may return ``(logits, extra)``). ``schedule`` overrides
  ``checkpoint_schedule(steps)`` with ``(is_check, window)`` arrays (traced
  arrays let one compiled step serve runs of different lengths).
  """
  is_check_tab, window_tab = (jnp.asarray(a) for a in (
      schedule if schedule is not None else checkpoint_schedule(steps)))
  loss_fn = _loss_fn(loss)

  def step(s: it.State, i: jax.Array) -> it.State:
    x_adv, ss = s["x_adv"], it.expand(s["step_size"], x)
    grad2 = x_adv - s["x_adv_old"]
    a = jnp.where(i > 0, MOMENTUM, 1.0).astype(x.dtype)
    if norm == "linf":
      z = _project(x_adv + ss * jnp.sign(s["grad"]), x, eps, norm)
    else:
      g = s["grad"]
      z = _project(x_adv + ss * g / (it.expand(it.l2_norm(g), g) + 1e-12), x,
                   eps, norm)
    x_new = _project(x_adv + (z - x_adv) * a + grad2 * (1 - a), x, eps, norm)

    loss_i, grad, logits = _loss_and_grad(logits_fn, x_new, y, target, keys,
                                          loss_fn, eot_iter, i + 1)
    correct = jnp.argmax(logits, -1) == y
    x_best_adv = it.where_b(~correct, x_new, s["x_best_adv"])
    improved = loss_i > s["loss_best"]
    x_best = it.where_b(improved, x_new, s["x_best"])
    grad_best = it.where_b(improved, grad, s["grad_best"])
    loss_best = jnp.where(improved, loss_i, s["loss_best"])
    n_increase = s["n_increase"] + (loss_i > s["loss_prev"]).astype(jnp.int32)

    # The step-size check, applied only at checkpoint iterations.
    check, k = is_check_tab[i], window_tab[i]
    oscillating = n_increase.astype(jnp.float32) <= k.astype(
        jnp.float32) * rho
    stalled = ~s["reduced_last_check"] & (s["loss_best_last_check"]
                                          >= loss_best)
    reduce = check & (oscillating | stalled)
    return dict(
        x_adv=it.where_b(reduce, x_best, x_new), x_adv_old=x_adv,
        grad=it.where_b(reduce, grad_best, grad),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        x_best_adv=x_best_adv, robust=s["robust"] & correct,
        step_size=jnp.where(reduce, s["step_size"] / 2, s["step_size"]),
        loss_prev=loss_i,
        n_increase=jnp.where(check, 0, n_increase),
        loss_best_last_check=jnp.where(check, loss_best,
                                       s["loss_best_last_check"]),
        reduced_last_check=jnp.where(check, reduce,
                                     s["reduced_last_check"]))

  return step


def check_args(eps, norm: str, loss: str, steps: int, rho: float,
               eot_iter: int, restarts: int = 1) -> tuple:
  """Validated ``(eps, norm, loss, steps, rho, eot_iter, restarts)``."""
  eps = checks.check_eps(eps)
  norm = checks.check_choice("norm", norm, NORMS)
  loss = checks.check_choice("loss", loss, APGD_LOSSES)
  steps = checks.static_int("steps", steps, 1)
  rho = checks.static_float("rho", rho)
  if not 0.0 < rho <= 1.0:
    raise ConfigError(f"rho={rho} must be in (0, 1]; the reference uses 0.75")
  return (eps, norm, loss, steps, rho, checks.static_int("eot_iter", eot_iter, 1),
          checks.static_int("restarts", restarts, 1))


def apgd(logits_fn: Callable, x: jax.Array, y: jax.Array, *,
         key: jax.Array, eps: float, norm: str = "linf", steps: int = 100,
         loss: str = "ce", target: jax.Array | None = None,
         restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
         keyed: bool = False) -> tuple[jax.Array, jax.Array]:
  """APGD in one traceable function (every iteration unrolled).

  Args:
    logits_fn: ``x [B, ...] -> [B, C]`` in inference mode, or, with
      ``keyed=True``, a randomised model ``(x [1, ...], key) -> [1, C]``:
      it is called per example with a fresh key of that example for every
      forward pass (``per_example``).
    x: ``[B, H, W, C]`` float images in [0, 1].
    y: ``[B]`` int labels.
    key: one PRNG key or a typed key array ``[B]`` (one per example, which
      makes each example's result independent of its batch).
    eps: radius in [0, 1] pixel units.
    norm: ``'linf'`` or ``'l2'``.
    steps: iterations per restart (100 in AutoAttack).
    loss: ``'ce'``, ``'dlr'`` or ``'dlr-targeted'`` (needs ``target``).
    target: ``[B]`` int target classes for ``'dlr-targeted'``.
    restarts: independent runs; an example keeps the first that fools it.
    rho: the oscillation threshold of the step-size rule.
    eot_iter: gradients averaged per step (EOT for randomised models).

  Returns:
    ``(x_adv, robust)``: ``x_adv [B, ...]`` (the clean image where no
    adversarial example was found) and ``robust [B]`` bool.
  """
  eps, norm, loss, steps, rho, eot_iter, restarts = check_args(
      eps, norm, loss, steps, rho, eot_iter, restarts)
  x = checks.check_images(x)
  y = checks.check_labels("y", y, x)
  if (loss == "dlr-targeted") != (target is not None):
    raise ConfigError("apgd: pass target= exactly when loss='dlr-targeted'")
  if keyed:
    fn = per_example(logits_fn)
  else:
    fn = lambda z, k: logits_fn(z)  # noqa: E731
  keys = it.example_keys(key, x.shape[0])
  x_adv, robust = x, jnp.ones(x.shape[:1], bool)
  for r in range(restarts):
    keys_r = it.fold_in_each(keys, r)
    state = init_state(fn, x, y, keys_r, eps=eps, norm=norm, loss=loss,
                       target=target, eot_iter=eot_iter)
    step = make_step(fn, x, y, keys_r, eps=eps, norm=norm, loss=loss,
                     steps=steps, target=target, rho=rho, eot_iter=eot_iter)
    state = it.run_steps(step, state, 0, steps)
    newly = robust & ~state["robust"]
    x_adv = it.where_b(newly, state["x_best_adv"], x_adv)
    robust = robust & state["robust"]
  return jax.lax.stop_gradient(x_adv), robust



# ---------------------------------------------------------------------------
# The registered forms (robustjax.attacks.registry): ``apgd-ce``,
# ``apgd-dlr`` and ``apgd-t`` with AutoAttack's defaults.

_APGD_DEFAULTS = dict(eps=8 / 255, norm="linf", steps=100, restarts=1,
                      rho=0.75, eot_iter=1)


def _check_apgd(p: dict) -> None:
  check_args(p["eps"], p["norm"], "ce", p["steps"], p["rho"], p["eot_iter"],
             p["restarts"])
  if "n_target_classes" in p:
    checks.static_int("n_target_classes", p["n_target_classes"], 1)


def _finish(state: it.State, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  robust = state["robust"]
  return it.where_b(robust, x, state["x_best_adv"]), robust


def _apgd_stepwise(loss: str) -> Callable[..., registry.Stepwise]:
  """The stepwise form of APGD with ``loss`` for AutoAttack's driver."""
  targeted = loss == "dlr-targeted"

  def build(*, eps, norm, steps, restarts, rho, eot_iter,
            n_target_classes=None) -> registry.Stepwise:
    del n_target_classes  # the driver picks the targets
    kwargs = dict(eps=eps, norm=norm, loss=loss, eot_iter=eot_iter)

    def init(model, x, y, target, keys):
      return init_state(model, x, y, keys, target=target if targeted
                        else None, **kwargs)

    def step(model, x, y, target, keys):
      return make_step(model, x, y, keys, steps=steps, rho=rho,
                       target=target if targeted else None, **kwargs)

    return registry.Stepwise(init, step, _finish, steps, targeted=targeted,
                             restarts=1 if targeted else restarts)
  return build


def _apgd_chunked(loss: str) -> Callable[..., registry.Chunked | None]:
  """Untargeted APGD with ``loss`` as init / step / output, for
  evaluation's compiled chunks: restart 0 of ``apgd``, from the same keys.
  None with ``restarts > 1`` (it then runs as one program)."""

  def build(*, eps, norm, steps, restarts, rho, eot_iter
            ) -> registry.Chunked | None:
    if restarts != 1:
      return None
    kwargs = dict(eps=eps, norm=norm, loss=loss, eot_iter=eot_iter)

    def keyed(logits_fn):
      return lambda z, k: logits_fn(z)

    def init(logits_fn, x, y, keys):
      return init_state(keyed(logits_fn), x, y, it.fold_in_each(keys, 0),
                        **kwargs)

    def make_step_(logits_fn, x, y, keys):
      return make_step(keyed(logits_fn), x, y, it.fold_in_each(keys, 0),
                       steps=steps, rho=rho, **kwargs)

    return registry.Chunked(init, make_step_,
                            lambda state, x: _finish(state, x)[0], steps)
  return build


def _label(name: str) -> Callable[[dict], str]:
  return lambda p: f"{name}{int(p['steps'])}"


def _register_untargeted(name: str, loss: str) -> None:
  @registry.register(name, defaults=_APGD_DEFAULTS, label=_label(name),
                     check=_check_apgd, stepwise=_apgd_stepwise(loss),
                     chunked=_apgd_chunked(loss))
  def attack(logits_fn, x, y, key, *, eps, norm, steps, restarts, rho,
             eot_iter):
    return apgd(logits_fn, x, y, key=key, eps=eps, norm=norm, steps=steps,
                loss=loss, restarts=restarts, rho=rho, eot_iter=eot_iter)[0]
  attack.__doc__ = f"``{name}`` by name: APGD maximising {loss.upper()}."


_register_untargeted("apgd-ce", "ce")
_register_untargeted("apgd-dlr", "dlr")


@registry.register(
    "apgd-t", defaults=dict(_APGD_DEFAULTS, n_target_classes=9),
    label=_label("apgd-t"), check=_check_apgd,
    stepwise=_apgd_stepwise("dlr-targeted"))
def apgd_targeted(logits_fn, x, y, key, *, eps, norm, steps, restarts, rho,
                  eot_iter, n_target_classes):
  """``apgd-t`` by name: targeted-DLR APGD towards each of the
  ``n_target_classes`` highest non-true classes of the clean logits in
  turn; an example keeps its first success (AutoAttack's APGD-T)."""
  ranking = jnp.argsort(-jax.lax.stop_gradient(logits_fn(x)), axis=-1)
  keys = it.example_keys(key, x.shape[0])
  x_adv, robust = x, jnp.ones(x.shape[:1], bool)
  for r in range(1, min(n_target_classes, ranking.shape[1] - 1) + 1):
    found, still = apgd(logits_fn, x, y, key=it.fold_in_each(keys, r),
                        eps=eps, norm=norm, steps=steps,
                        loss="dlr-targeted", target=ranking[:, r],
                        restarts=restarts, rho=rho, eot_iter=eot_iter)
    x_adv = it.where_b(robust & ~still, found, x_adv)
    robust = robust & still
  return x_adv
