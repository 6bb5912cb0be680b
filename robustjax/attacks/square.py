"""Square Attack (Andriushchenko et al. 2020): score-based, Linf and L2.

Follows fra31/auto-attack ``square.py`` as AutoAttack runs it (margin loss,
``p_init = 0.8``, 5000 queries, no rescaled schedule):

  * Linf starts from vertical stripes ``x + eps * s`` with a random sign
    ``s`` per column and channel; each query adds ``+-2 eps`` (one sign per
    channel) on a random ``w x w`` square, projected back. L2 starts from a
    grid of 5x5 "eta" blocks and each query moves mass between two random
    squares, channel by channel (``l2_proposal``), keeping
    ``||delta||_2 = eps``;
  * the square side follows the schedule of ``p``: ``w = round(sqrt(p H W))``
    with ``p`` halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
    queries (L2: at least 3 and odd);
  * a candidate is kept when it lowers the margin loss or misclassifies;
    an example stops querying once it is misclassified.

One deliberate difference: the reference draws one square position, one
set of channel signs and one eta orientation per iteration for the whole
batch; here every example draws its own from its own key. Each example sees
the same distribution, and its result does not depend on which other
points share its batch, so robust accuracy is the same for any batch size
or device count.

The square side depends on the (traced) iteration through masks and a
precomputed table of eta patterns, so one compiled program serves every
iteration of the schedule.

``init_state`` and ``make_step`` take a keyed ``logits_fn(x [B, ...],
keys [B]) -> [B, K]``: every query passes each example a fresh key of its
own (``query_keys``), which a randomised model draws its noise from and a
deterministic one ignores. ``square`` takes a plain ``logits_fn(x)``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import checks, iterative as it, registry
from robustjax.attacks.checks import NORMS
from robustjax.errors import ConfigError

# Iterations after which p halves (fra31's p_selection, for 10,000 queries).
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Folded into an example's key to branch off the keys of its model calls, so
# they never coincide with the keys its squares and signs are drawn from.
_MODEL_STREAM = 2 ** 31 - 1


def query_keys(keys: jax.Array, query: jax.Array | int) -> jax.Array:
  """``[B]`` keys for the model call of query ``query`` (0: the start).

  Each example and each query gets its own key, so a randomised model draws
  fresh noise at every query, independently of the other examples.
  """
  return it.fold_in_each(it.fold_in_each(keys, _MODEL_STREAM), query)


def p_level(i: jax.Array, n_queries: int, rescale: bool) -> jax.Array:
  """How many times ``p`` has halved by iteration ``i`` (0..9)."""
  if rescale:
    i = (i * 10000) // n_queries
  return jnp.sum(i > jnp.asarray(P_THRESHOLDS)).astype(jnp.int32)


def square_sides(p_init: float, height: int, width: int, norm: str
                 ) -> np.ndarray:
  """The square side at each p level, as the reference rounds it."""
  sides = []
  for level in range(len(P_THRESHOLDS) + 1):
    p = p_init / 2 ** level
    side = int(round(math.sqrt(p * height * width)))
    if norm == "linf":
      side = max(side, 1)
    else:
      side = max(side, 3)
      side += 1 - side % 2  # odd
    sides.append(min(side, height, width))
  return np.asarray(sides, np.int32)


def _eta_rectangles(rows: int, cols: int) -> np.ndarray:
  """Nested rectangles weighted 1/(k+1)^2, centred, unit Frobenius norm."""
  out = np.zeros((rows, cols))
  r0, c0 = rows // 2, cols // 2
  for k in range(max(rows // 2 + 1, cols // 2 + 1)):
    out[max(r0 - k, 0):min(r0 - k + 2 * k + 1, rows),
        max(c0 - k, 0):min(c0 - k + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
  return out / np.sqrt(np.sum(out ** 2))


def eta_pattern(side: int) -> np.ndarray:
  """The L2 Square update: +rectangles on top, -rectangles below, norm 1."""
  top = _eta_rectangles(side // 2, side) if side // 2 else np.zeros((0, side))
  pattern = np.concatenate([top, -_eta_rectangles(side - side // 2, side)])
  return pattern / np.sqrt(np.sum(pattern ** 2))


def _eta_table(sides: np.ndarray, height: int, width: int) -> np.ndarray:
  """``[levels, 2, H, W]``: each level's pattern (and its transpose) at 0,0."""
  table = np.zeros((len(sides), 2, height, width), np.float32)
  for level, side in enumerate(sides):
    pattern = eta_pattern(int(side))
    table[level, 0, :side, :side] = pattern
    table[level, 1, :side, :side] = pattern.T
  return table


def _window(row: jax.Array, col: jax.Array, side: jax.Array, height: int,
            width: int) -> jax.Array:
  """``[H, W]`` float mask of the square ``[row, row+side) x [col, col+side)``."""
  r = jnp.arange(height)[:, None]
  c = jnp.arange(width)[None, :]
  return ((r >= row) & (r < row + side) & (c >= col)
          & (c < col + side)).astype(jnp.float32)


def _shift(pattern: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
  """``pattern [H, W]`` (content at 0,0) moved to start at ``(row, col)``."""
  height, width = pattern.shape
  shift_r = (jnp.arange(height)[:, None] == jnp.arange(height)[None, :]
             + row).astype(pattern.dtype)
  shift_c = (jnp.arange(width)[None, :] == jnp.arange(width)[:, None]
             + col).astype(pattern.dtype)
  return shift_r @ pattern @ shift_c


def _random_offset(key: jax.Array, limit: jax.Array) -> jax.Array:
  """``floor(limit * U)`` as the reference's ``random_int(0, limit)``."""
  return jnp.floor(limit * jax.random.uniform(key)).astype(jnp.int32)


def margin_and_loss(logits: jax.Array, y: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """``(z_y - max_{j != y} z_j, same)``: AutoAttack's Square uses margin."""
  z = logits.astype(jnp.float32)
  z_y = jnp.take_along_axis(z, y[:, None], -1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, z.shape[-1], dtype=bool), -jnp.inf, z)
  margin = z_y - jnp.max(others, -1)
  return margin, margin


def init_state(logits_fn: it.KeyedLogitsFn, x: jax.Array, y: jax.Array,
               keys: jax.Array, *, eps: float, norm: str) -> it.State:
  """The starting perturbation, its margin, and the query counters.

  Args:
    logits_fn: ``(x [B, H, W, C], keys [B]) -> [B, K]``.
    x: ``[B, H, W, C]`` clean images in [0, 1].
    y: ``[B]`` int labels.
    keys: ``[B]`` per-example PRNG keys of this attack.
    eps: radius in [0, 1] pixel units.
    norm: ``'linf'`` or ``'l2'``.

  Returns:
    ``x_best [B, H, W, C]``, ``margin [B]``, ``loss [B]``, ``queries [B]``.
  """
  batch, height, width, channels = x.shape
  keys0 = it.fold_in_each(keys, 0)
  if norm == "linf":
    signs = jax.vmap(lambda k: jax.random.rademacher(
        k, (1, width, channels), x.dtype))(keys0)
    x_best = jnp.clip(x + eps * signs, 0.0, 1.0)
  else:
    side = height // 5
    start = (height - side * 5) // 2
    pattern = eta_pattern(side).astype(np.float32)
    blocks = np.stack([pattern, pattern.T])

    def one(k):
      k_sign, k_flip = jax.random.split(k)
      signs = jax.random.rademacher(k_sign, (height // side, width // side,
                                             channels), jnp.float32)
      flips = jax.random.bernoulli(k_flip, 0.5,
                                   (height // side, width // side))
      delta = jnp.zeros((height, width, channels), jnp.float32)
      for bi in range(height // side):
        for bj in range(width // side):
          block = jnp.asarray(blocks)[flips[bi, bj].astype(jnp.int32)]
          r, c = start + bi * side, start + bj * side
          delta = delta.at[r:r + side, c:c + side, :].add(
              block[:, :, None] * signs[bi, bj])
      return delta

    delta = jax.vmap(one)(keys0).astype(x.dtype)
    delta = delta / (it.expand(it.l2_norm(delta), delta) + 1e-12)
    x_best = jnp.clip(x + eps * delta, 0.0, 1.0)
  margin, loss = margin_and_loss(logits_fn(x_best, query_keys(keys, 0)), y)
  return dict(x_best=x_best, margin=margin, loss=loss,
              queries=jnp.ones((batch,), jnp.int32))


def l2_proposal(x: jax.Array, x_best: jax.Array, window: jax.Array,
                window2: jax.Array, pattern: jax.Array, signs: jax.Array,
                eps: float) -> jax.Array:
  """One L2 Square query of one example, given its random draws.

  With ``delta = x_best - x``, every channel ``c`` empties ``window2`` and
  refills ``window`` with ``pattern * signs[c]`` plus its own old content of
  ``window`` (each part at unit norm). The refilled square gets, per
  channel, the mass that channel had on the two squares plus a ``1/C``
  share of what is missing to ``eps``:
  ``||new_c||^2 = ||delta_c on window u window2||^2
  + max(eps^2 - ||delta||^2, 0) / C``. Summed over channels that is exactly
  the mass removed plus the slack, so the norm stays at ``eps`` and the rest
  of the image keeps its size after the final renormalisation. (Measuring
  the two-window mass over all channels at once would hand every channel's
  square the mass of all ``C`` channels.)

  Args:
    x: ``[H, W, C]`` clean image.
    x_best: ``[H, W, C]`` current best point, ``||x_best - x||_2 <= eps``.
    window: ``[H, W]`` 0/1 mask of the square that receives the update.
    window2: ``[H, W]`` 0/1 mask of the square that is emptied.
    pattern: ``[H, W]`` the unit-norm eta pattern placed on ``window``
      (zero outside it).
    signs: ``[C]`` +-1, the pattern's sign in each channel.
    eps: the L2 radius.

  Returns:
    ``[H, W, C]`` the candidate ``clip(x + eps * delta' / ||delta'||, 0, 1)``.
  """
  channels = x.shape[-1]
  delta = (x_best - x).astype(jnp.float32)
  w1 = window[:, :, None]
  w2 = window2[:, :, None]

  def per_channel(v):  # [H, W, C] -> [C]
    return jnp.sqrt(jnp.sum(jnp.square(v), (0, 1)))

  norm_window = per_channel(delta * w1)                     # [C]
  norm_windows = per_channel(delta * jnp.maximum(w1, w2))   # [C]
  norm_image = jnp.sqrt(jnp.sum(jnp.square(delta)))         # scalar
  new = pattern[:, :, None] * signs + delta * w1 / (1e-12 + norm_window)
  new = new / (1e-12 + per_channel(new)) * jnp.sqrt(
      jnp.maximum(eps ** 2 - norm_image ** 2, 0.0) / channels
      + norm_windows ** 2)
  delta = delta * (1.0 - w2)
  delta = delta * (1.0 - w1) + new * w1
  delta = delta / (jnp.sqrt(jnp.sum(jnp.square(delta))) + 1e-12)
  return jnp.clip(x + eps * delta, 0.0, 1.0)


def make_step(logits_fn: it.KeyedLogitsFn, x: jax.Array, y: jax.Array,
              keys: jax.Array, *, eps: float, norm: str, n_queries: int,
              p_init: float = 0.8, rescale_schedule: bool = False
              ) -> Callable[[it.State, jax.Array], it.State]:
  """``step(state, i) -> state``: query ``i + 1`` of every active example.

  ``logits_fn(x [B, H, W, C], keys [B]) -> [B, K]`` gets ``query_keys(keys,
  i + 1)``; ``keys [B]`` are the per-example keys of ``init_state``.
  """
  _, height, width, channels = x.shape
  sides_np = square_sides(p_init, height, width, norm)
  sides = jnp.asarray(sides_np)
  eta_table = jnp.asarray(_eta_table(sides_np, height, width))

  def linf_candidate(k, x_e, best_e, side):
    k_r, k_c, k_s = jax.random.split(k, 3)
    row = _random_offset(k_r, height - side)
    col = _random_offset(k_c, width - side)
    signs = jax.random.rademacher(k_s, (channels,), x.dtype)
    window = _window(row, col, side, height, width)[:, :, None]
    new = best_e + window * (2.0 * eps * signs)
    return jnp.clip(jnp.clip(new, x_e - eps, x_e + eps), 0.0, 1.0)

  def l2_candidate(k, x_e, best_e, side, level):
    k_r, k_c, k_r2, k_c2, k_s, k_t = jax.random.split(k, 6)
    row = _random_offset(k_r, height - side)
    col = _random_offset(k_c, width - side)
    row2 = _random_offset(k_r2, height - side)
    col2 = _random_offset(k_c2, width - side)
    flip = jax.random.bernoulli(k_t).astype(jnp.int32)
    return l2_proposal(
        x_e, best_e, _window(row, col, side, height, width),
        _window(row2, col2, side, height, width),
        _shift(eta_table[level, flip], row, col),
        jax.random.rademacher(k_s, (channels,), jnp.float32), eps)

  def step(s: it.State, i: jax.Array) -> it.State:
    level = p_level(i, n_queries, rescale_schedule)
    side = sides[level]
    step_keys = it.fold_in_each(keys, i + 1)
    if norm == "linf":
      x_new = jax.vmap(linf_candidate, (0, 0, 0, None))(
          step_keys, x, s["x_best"], side)
    else:
      x_new = jax.vmap(l2_candidate, (0, 0, 0, None, None))(
          step_keys, x, s["x_best"], side, level).astype(x.dtype)
    margin, loss = margin_and_loss(logits_fn(x_new, query_keys(keys, i + 1)),
                                   y)
    active = s["margin"] > 0.0
    lower = (loss < s["loss"]) & active
    take = (lower | (margin <= 0.0)) & active
    return dict(x_best=it.where_b(take, x_new, s["x_best"]),
                margin=jnp.where(take, margin, s["margin"]),
                loss=jnp.where(lower, loss, s["loss"]),
                queries=s["queries"] + active.astype(jnp.int32))

  return step


def check_args(eps, norm: str, n_queries: int, p_init: float) -> tuple:
  eps = checks.check_eps(eps)
  norm = checks.check_choice("norm", norm, NORMS)
  n_queries = checks.static_int("n_queries", n_queries, 1)
  p_init = checks.static_float("p_init", p_init)
  if not 0.0 < p_init <= 1.0:
    raise ConfigError(f"p_init={p_init} must be in (0, 1]; AutoAttack uses "
                      "0.8")
  return eps, norm, n_queries, p_init


def square(logits_fn: Callable, x: jax.Array, y: jax.Array, *,
           key: jax.Array, eps: float, norm: str = "linf",
           n_queries: int = 5000, p_init: float = 0.8,
           rescale_schedule: bool = False) -> tuple[jax.Array, jax.Array]:
  """Square Attack in one traceable function (every query unrolled).

  Unrolling 5000 queries only suits small ``n_queries``; the AutoAttack
  driver runs the same step in compiled chunks instead.

  Args:
    logits_fn: ``x [B, H, W, C] -> [B, C]``; only its outputs are used.
    x: ``[B, H, W, C]`` float images in [0, 1].
    y: ``[B]`` int labels.
    key: one PRNG key or a typed key array ``[B]``.
    eps: radius in [0, 1] pixel units.
    norm: ``'linf'`` or ``'l2'``.
    n_queries: iterations (queries after the first).
    p_init: initial fraction of pixels changed per query.
    rescale_schedule: stretch the p schedule to ``n_queries`` (torchattacks'
      default); AutoAttack uses False.

  Returns:
    ``(x_adv, robust)``: the best point found (clean image if the example
    stayed robust) and ``robust [B]`` bool.
  """
  eps, norm, n_queries, p_init = check_args(eps, norm, n_queries, p_init)
  x = checks.check_images(x)
  y = checks.check_labels("y", y, x)
  keys = it.example_keys(key, x.shape[0])
  keyed = lambda z, k: logits_fn(z)  # noqa: E731
  state = init_state(keyed, x, y, keys, eps=eps, norm=norm)
  step = make_step(keyed, x, y, keys, eps=eps, norm=norm,
                   n_queries=n_queries, p_init=p_init,
                   rescale_schedule=rescale_schedule)
  state = it.run_steps(step, state, 0, n_queries)
  robust = state["margin"] > 0.0
  return it.where_b(robust, x, state["x_best"]), robust


# ---------------------------------------------------------------------------
# The registered form (robustjax.attacks.registry): ``square``.


def _square_stepwise(*, eps, norm, n_queries, p_init) -> registry.Stepwise:

  def init(model, x, y, target, keys):
    del target
    return init_state(model, x, y, keys, eps=eps, norm=norm)

  def step(model, x, y, target, keys):
    del target
    return make_step(model, x, y, keys, eps=eps, norm=norm,
                     n_queries=n_queries, p_init=p_init)

  def finish(state, x):
    robust = state["margin"] > 0.0
    return it.where_b(robust, x, state["x_best"]), robust

  # A batch whose points are all broken stops early.
  return registry.Stepwise(init, step, finish, n_queries,
                           still_robust=lambda state: state["margin"] > 0.0)


@registry.register(
    "square", defaults=dict(eps=8 / 255, norm="linf", n_queries=5000,
                            p_init=0.8),
    label=lambda p: f"square{int(p['n_queries'])}",
    check=lambda p: check_args(p["eps"], p["norm"], p["n_queries"],
                               p["p_init"]),
    stepwise=_square_stepwise)
def square_attack(logits_fn, x, y, key, *, eps, norm, n_queries, p_init):
  """``square`` by name: the Square Attack (score-based, no gradients)."""
  return square(logits_fn, x, y, key=key, eps=eps, norm=norm,
                n_queries=n_queries, p_init=p_init)[0]
