"""AutoAttack in JAX: known answers, invariants and the cascade.

The agreement with torchattacks on shared weights lives in
``test_autoattack_reference.py``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from robustjax import sharding
from robustjax.attacks import apgd as apgd_lib
from robustjax.attacks import autoattack as aa
from robustjax.attacks import fab as fab_lib
from robustjax.attacks import iterative as it
from robustjax.attacks import square as square_lib
from robustjax.errors import ConfigError

import tiny_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One worker trains the tiny CNN once for this file and the reference tests.
pytestmark = pytest.mark.xdist_group("trained_tiny_cnn")


# ---------------------------------------------------------------------------
# Reference schedules.


def test_apgd_checkpoints_match_the_reference_schedule():
  is_check, window = apgd_lib.checkpoint_schedule(100)
  assert list(np.flatnonzero(is_check)) == [21, 40, 56, 69, 79, 86, 92, 98]
  assert list(window[is_check]) == [22, 19, 16, 13, 10, 7, 6, 6]


def test_square_sides_follow_the_p_schedule():
  assert list(square_lib.square_sides(0.8, 32, 32, "linf")) == [
      29, 20, 14, 10, 7, 5, 4, 3, 2, 1]
  l2 = square_lib.square_sides(0.8, 32, 32, "l2")
  assert all(s % 2 == 1 and s >= 3 for s in l2)
  levels = [int(square_lib.p_level(jnp.int32(i), 5000, False))
            for i in (0, 10, 11, 50, 51, 4999)]
  assert levels == [0, 0, 1, 1, 2, 7]


def test_eta_pattern_has_unit_norm_and_opposite_halves():
  p = square_lib.eta_pattern(7)
  assert np.isclose(np.sum(p ** 2), 1.0)
  assert (p[:3] > 0).all() and (p[3:] < 0).all()


# ---------------------------------------------------------------------------
# Square's L2 query against the reference's arithmetic.


def _reference_eta(s):
  """fra31's L2 eta(s) (before its random transpose), in numpy.

  Rectangles centred at (rows // 2, cols // 2), growing by one pixel per
  side per ring, ring k weighted 1 / (k + 1)^2, each half normalised, the
  top half positive and the bottom half negative, normalised again.
  """
  def rectangles(rows, cols):
    out = np.zeros((rows, cols))
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
      top, left = rows // 2 - k, cols // 2 - k
      out[max(top, 0):min(top + 2 * k + 1, rows),
          max(left, 0):min(left + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
    return out / np.sqrt((out ** 2).sum())
  eta = np.concatenate([rectangles(s // 2, s), -rectangles(s - s // 2, s)])
  return eta / np.sqrt((eta ** 2).sum())


def _reference_l2_query(x, x_best, vh, vw, vh2, vw2, eta, signs, eps,
                        per_channel=True):
  """One L2 query of fra31/auto-attack's Square, for one image ``[C, H, W]``.

  Square 1 (top-left ``vh, vw``) gets ``eta * sign_c`` plus its own old
  content, each at unit norm per channel, rescaled per channel to
  ``sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta_c on both squares||^2)``;
  square 2 (``vh2, vw2``) is emptied; the whole perturbation is rescaled to
  ``eps`` and the point clipped to [0, 1]. ``per_channel=False`` measures
  the two-square mass over all channels at once (the superseded formula,
  which torchattacks 3.5.1 still uses), to show this example tells the two
  apart.
  """
  c, s = x.shape[0], eta.shape[0]
  delta = (x_best - x).astype(np.float64)
  both = np.zeros_like(delta)
  both[:, vh:vh + s, vw:vw + s] = 1.0
  both[:, vh2:vh2 + s, vw2:vw2 + s] = 1.0
  old = delta[:, vh:vh + s, vw:vw + s]
  old = old / (1e-12 + np.sqrt((old ** 2).sum((1, 2), keepdims=True)))
  if per_channel:
    mass = np.sqrt(((delta * both) ** 2).sum((1, 2), keepdims=True))
  else:
    mass = np.sqrt(((delta * both) ** 2).sum())
  slack = max(eps ** 2 - (delta ** 2).sum(), 0.0) / c
  new = eta[None] * signs[:, None, None] + old
  new = new / (1e-12 + np.sqrt((new ** 2).sum((1, 2), keepdims=True)))
  new = new * np.sqrt(slack + mass ** 2)
  delta[:, vh2:vh2 + s, vw2:vw2 + s] = 0.0
  delta[:, vh:vh + s, vw:vw + s] = new
  delta = delta / (np.sqrt((delta ** 2).sum()) + 1e-12)
  return np.clip(x + eps * delta, 0.0, 1.0)


@pytest.mark.parametrize("transpose", [False, True])
def test_square_l2_query_matches_the_reference_arithmetic(transpose):
  """A fixed perturbation, fixed squares (overlapping) and fixed signs."""
  height, width, channels, side, eps = 9, 8, 3, 5, 0.5
  rng = np.random.default_rng(0)
  x = rng.uniform(0.3, 0.7, (channels, height, width))
  # Channels of unequal size, inside the ball (so the slack term counts).
  scale = np.array([0.5, 1.0, 2.0])[:, None, None]
  delta = rng.normal(size=x.shape) * scale
  delta *= 0.8 * eps / np.sqrt((delta ** 2).sum())
  x_best = x + delta
  vh, vw, vh2, vw2 = 1, 2, 3, 0
  signs = np.array([1.0, -1.0, 1.0])
  eta = _reference_eta(side)
  np.testing.assert_allclose(eta, square_lib.eta_pattern(side), atol=1e-12)
  if transpose:
    eta = eta.T
  want = _reference_l2_query(x, x_best, vh, vw, vh2, vw2, eta, signs, eps)
  superseded = _reference_l2_query(x, x_best, vh, vw, vh2, vw2, eta, signs,
                                   eps, per_channel=False)
  assert np.abs(want - superseded).max() > 1e-2  # the example tells them apart

  window = np.zeros((height, width), np.float32)
  window[vh:vh + side, vw:vw + side] = 1.0
  window2 = np.zeros((height, width), np.float32)
  window2[vh2:vh2 + side, vw2:vw2 + side] = 1.0
  pattern = np.zeros((height, width), np.float32)
  pattern[vh:vh + side, vw:vw + side] = eta
  hwc = lambda a: jnp.asarray(a.transpose(1, 2, 0), jnp.float32)  # noqa: E731
  got = square_lib.l2_proposal(hwc(x), hwc(x_best), jnp.asarray(window),
                               jnp.asarray(window2), jnp.asarray(pattern),
                               jnp.asarray(signs, jnp.float32), eps)
  np.testing.assert_allclose(np.asarray(got).transpose(2, 0, 1), want,
                             atol=1e-6)
  # No clipping here, so the query keeps the perturbation on the sphere.
  assert np.sqrt(((np.asarray(got) - hwc(x)) ** 2).sum()) == pytest.approx(
      eps, rel=1e-5)


# ---------------------------------------------------------------------------
# FAB's projections against a generic solver.


def _lp_linf(t, w, b):
  """min ||d||_inf s.t. w.(t+d) = b, 0 <= t+d <= 1, by linear programming."""
  d = t.size
  cost = np.zeros(d + 1)
  cost[-1] = 1.0
  eye = np.eye(d)
  a_ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
  res = optimize.linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d),
                         A_eq=np.append(w, 0.0)[None],
                         b_eq=[b - w @ t],
                         bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)])
  assert res.status == 0
  return res.fun


@pytest.mark.parametrize("seed", range(4))
def test_linf_projection_is_the_linear_programme_optimum(seed):
  rng = np.random.default_rng(seed)
  t = rng.uniform(0, 1, (3, 40))
  w = rng.normal(size=(3, 40))
  w[:, :5] = 0.0  # zero weights must not move
  b = np.sum(w * t, 1) + rng.normal(size=3) * 2.0
  d = np.asarray(fab_lib.project_linf(jnp.asarray(t, jnp.float32),
                                      jnp.asarray(w, jnp.float32),
                                      jnp.asarray(b, jnp.float32)))
  for i in range(3):
    np.testing.assert_allclose(np.sum(w[i] * (t[i] + d[i])), b[i], atol=1e-4)
    assert (t[i] + d[i] >= -1e-6).all() and (t[i] + d[i] <= 1 + 1e-6).all()
    assert np.abs(d[i]).max() == pytest.approx(_lp_linf(t[i], w[i], b[i]),
                                               abs=1e-5)
    assert (d[i, :5] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_l2_projection_is_the_constrained_optimum(seed):
  rng = np.random.default_rng(seed)
  t = rng.uniform(0, 1, (3, 30))
  w = rng.normal(size=(3, 30))
  b = np.sum(w * t, 1) + rng.normal(size=3) * 1.5
  d = np.asarray(fab_lib.project_l2(jnp.asarray(t, jnp.float32),
                                    jnp.asarray(w, jnp.float32),
                                    jnp.asarray(b, jnp.float32)))
  for i in range(3):
    res = optimize.minimize(
        lambda v: 0.5 * v @ v, np.zeros(30), jac=lambda v: v,
        constraints=[{"type": "eq", "fun": lambda v, i=i: w[i] @ (t[i] + v)
                      - b[i], "jac": lambda v, i=i: w[i]}],
        bounds=[(-ti, 1 - ti) for ti in t[i]], method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500})
    assert res.success
    np.testing.assert_allclose(np.linalg.norm(d[i]),
                               np.linalg.norm(res.x), rtol=1e-4)
    np.testing.assert_allclose(d[i], res.x, atol=1e-4)


def test_unreachable_hyperplane_sends_every_coordinate_to_its_bound():
  t = jnp.full((1, 4), 0.5)
  w = jnp.asarray([[1.0, -1.0, 2.0, 0.0]])
  b = jnp.asarray([100.0])  # far beyond what the box allows
  d = np.asarray(fab_lib.project_linf(t, w, b))
  np.testing.assert_allclose(d, [[0.5, -0.5, 0.5, 0.0]])


# ---------------------------------------------------------------------------
# Known answers on a linear classifier.


def _linear(num_classes=3, dim=12, seed=0):
  rng = np.random.default_rng(seed)
  weights = jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=num_classes) * 0.1, jnp.float32)
  return lambda x: x.reshape(x.shape[0], -1) @ weights + bias, weights, bias


def test_fab_finds_the_closed_form_minimal_linf_perturbation():
  f, weights, bias = _linear()
  x = jnp.full((6, 2, 2, 3), 0.5) + jax.random.uniform(
      jax.random.key(1), (6, 2, 2, 3), minval=-0.05, maxval=0.05)
  logits = f(x)
  y = jnp.argmax(logits, -1)
  target = jnp.argsort(-logits, -1)[:, 1]
  # Linear boundary between y and t: the minimal Linf step is |f| / ||v||_1
  # (the box is far: every point is near 0.5 and the answer is small).
  v = np.asarray(weights[:, target] - weights[:, y]).T
  gap = np.asarray(jnp.take_along_axis(logits, y[:, None], 1)
                   - jnp.take_along_axis(logits, target[:, None], 1))[:, 0]
  optimum = gap / np.abs(v).sum(1)
  assert (optimum < 0.4).all()
  found = np.asarray(fab_lib.min_norm(f, x, y, target, norm="linf",
                                      steps=20))
  assert (found >= optimum * (1 - 1e-4)).all()
  assert (found <= optimum * 1.01).all(), (found / optimum)
  # eps just above / below the optimum decides the outcome.
  _, robust = fab_lib.fab_targeted(f, x, y, target, eps=float(
      optimum.max() * 1.02), steps=20)
  assert not np.asarray(robust).any()
  _, robust = fab_lib.fab_targeted(f, x, y, target, eps=float(
      optimum.min() * 0.98), steps=20)
  assert np.asarray(robust).all()


def test_apgd_reaches_the_optimum_of_a_linear_model():
  f, weights, _ = _linear(num_classes=2)
  x = jax.random.uniform(jax.random.key(2), (8, 2, 2, 3), minval=0.2,
                         maxval=0.8)
  y = jnp.argmax(f(x), -1)
  eps = 0.05
  # CE of a 2-class linear model is monotone in the margin, maximised by the
  # corner x - eps * sign(w_y - w_other) (clipped: the box is not active).
  v = np.asarray(weights[:, 1] - weights[:, 0])
  direction = np.where(np.asarray(y)[:, None] == 1, -np.sign(v), np.sign(v))
  best = jnp.asarray(np.asarray(x).reshape(8, -1) + eps * direction,
                     jnp.float32).reshape(x.shape)
  ce = lambda z: -jax.nn.log_softmax(f(z))[jnp.arange(8), y]  # noqa: E731
  keys = it.example_keys(jax.random.key(0), 8)
  fn = lambda z, k: f(z)  # noqa: E731
  state = apgd_lib.init_state(fn, x, y, keys, eps=eps, norm="linf",
                              loss="ce")
  state = it.run_steps(apgd_lib.make_step(fn, x, y, keys, eps=eps,
                                          norm="linf", loss="ce", steps=30),
                       state, 0, 30)
  np.testing.assert_allclose(state["loss_best"], ce(best), rtol=1e-5)
  assert np.abs(np.asarray(state["x_best"] - x)).max() <= eps + 1e-6


def test_apgd_l2_stays_in_the_ball_and_beats_the_start():
  f, _, _ = _linear()
  x = jax.random.uniform(jax.random.key(3), (5, 2, 2, 3))
  y = jnp.argmax(f(x), -1)
  keys = it.example_keys(jax.random.key(0), 5)
  fn = lambda z, k: f(z)  # noqa: E731
  s0 = apgd_lib.init_state(fn, x, y, keys, eps=0.3, norm="l2", loss="dlr")
  s = it.run_steps(apgd_lib.make_step(fn, x, y, keys, eps=0.3, norm="l2",
                                      loss="dlr", steps=20), s0, 0, 20)
  assert (np.asarray(s["loss_best"]) >= np.asarray(s0["loss_best"])).all()
  assert (np.asarray(it.l2_norm(s["x_best"] - x)) <= 0.3 + 1e-5).all()


# ---------------------------------------------------------------------------
# The cascade on a trained network.


@pytest.fixture(scope="module")
def trained():
  model, variables = tiny_models.trained_tiny_cnn()
  x, y = tiny_models.test_points(64)
  return model, variables, x, y


@functools.lru_cache(maxsize=None)
def _apply(model):
  # One function object per model, so the cascade's compiled attacks are
  # reused across runs (run_autoattack caches them by apply_fn).
  return lambda v, z, k: model.apply(v, z)


SHORT = dict(apgd_steps=20, fab_steps=10, square_queries=100,
             n_target_classes=3)


def test_undefended_model_is_broken_at_8_over_255(trained):
  model, variables, x, y = trained
  result = aa.run_autoattack(_apply(model), variables, x, y,
                             aa.config_for("standard", **SHORT),
                             mesh=sharding.make_mesh(1), batch_size=64)
  assert result.clean_acc > 0.3
  assert result.robust_acc == 0.0
  assert result.max_perturbation <= 8 / 255 + 1e-6


def test_cascade_invariants_and_same_result_for_any_batch_and_devices(
    trained):
  model, variables, x, y = trained
  cfg = aa.config_for("standard", eps=2 / 255, **SHORT)
  one = aa.run_autoattack(_apply(model), variables, x, y, cfg,
                          mesh=sharding.make_mesh(1), batch_size=16)
  eight = aa.run_autoattack(_apply(model), variables, x, y, cfg,
                            mesh=sharding.make_mesh(8), batch_size=32)
  again = aa.run_autoattack(_apply(model), variables, x, y, cfg,
                            mesh=sharding.make_mesh(1), batch_size=16)
  np.testing.assert_array_equal(one.robust, again.robust)  # deterministic
  np.testing.assert_array_equal(one.x_adv, again.x_adv)
  assert np.mean(one.robust == eight.robust) >= 0.98
  assert abs(one.robust_acc - eight.robust_acc) <= 1 / 64 + 1e-9
  # Robust accuracy only falls along the cascade and ends at the final.
  accs = [row["robust_acc"] for row in one.by_attack]
  assert accs == sorted(accs, reverse=True) and accs[-1] == one.robust_acc
  assert 0.0 < one.robust_acc < one.clean_acc
  # Every returned point is in the ball and [0, 1], and misclassified
  # exactly where the cascade says it is broken.
  delta = np.abs(one.x_adv - x).reshape(64, -1).max(1)
  assert delta.max() <= 2 / 255 + 1e-6
  assert one.x_adv.min() >= 0 and one.x_adv.max() <= 1
  pred = np.asarray(model.apply(variables, one.x_adv)).argmax(1)
  np.testing.assert_array_equal(pred == y, one.robust)


@pytest.mark.parametrize("batch_size, n_devices", [(500, 2), (512, 1),
                                                    (64, 8)])
def test_batch_plan_pads_little_and_keeps_the_shapes_few(batch_size,
                                                         n_devices):
  sizes = set()
  for remaining in range(1, 2 * batch_size + 1):
    batches, size = aa._batch_plan(remaining, batch_size, n_devices)
    sizes.add(size)
    assert size % n_devices == 0 and size <= batch_size
    assert (batches - 1) * size < remaining <= batches * size
    assert batches == -(-remaining // batch_size)  # as few as fit
    # Padding: under a quarter of the points (and of the rounding to whole
    # points per device) once a device holds >= 4; fewer are not rounded.
    per_device = -(-remaining // (batches * n_devices))
    if per_device >= 4:
      assert batches * size < 1.25 * (remaining + batches * n_devices), (
          remaining, batches, size)
  # Four shapes per doubling of the batch: a shrinking cascade recompiles
  # its attacks a handful of times, not once per point count.
  doublings = int(np.log2(batch_size // n_devices)) + 1
  assert len(sizes) <= 4 * doublings, sorted(sizes)


def test_l2_cascade_keeps_every_point_in_the_l2_ball(trained):
  model, variables, x, y = trained
  eps = 0.25
  result = aa.run_autoattack(_apply(model), variables, x[:32], y[:32],
                             aa.config_for("standard", norm="l2", eps=eps,
                                           **SHORT),
                             mesh=sharding.make_mesh(1), batch_size=32)
  norms = np.sqrt(((result.x_adv - x[:32]) ** 2).reshape(32, -1).sum(1))
  assert norms.max() <= eps + 1e-5
  assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
  assert 0.0 < result.robust_acc < result.clean_acc
  pred = np.asarray(model.apply(variables, result.x_adv)).argmax(1)
  np.testing.assert_array_equal(pred == y[:32], result.robust)


def test_square_defeats_gradient_masking_that_stops_apgd(trained):
  model, variables, x, y = trained

  def masked(v, z, k):
    # Rounding the input to 64 levels: the function barely changes, but its
    # gradient is zero almost everywhere, so gradient attacks see nothing.
    return model.apply(v, jnp.round(z * 63) / 63)

  eps = 8 / 255
  kwargs = dict(mesh=sharding.make_mesh(1), batch_size=64)
  white = aa.run_autoattack(masked, variables, x, y, aa.config_for(
      "custom", attacks=("apgd-ce",), eps=eps, apgd_steps=20), **kwargs)
  both = aa.run_autoattack(masked, variables, x, y, aa.config_for(
      "custom", attacks=("apgd-ce", "square"), eps=eps, apgd_steps=20,
      square_queries=300), **kwargs)
  clean_model = aa.run_autoattack(_apply(model), variables, x, y,
                                  aa.config_for("custom", attacks=(
                                      "apgd-ce",), eps=eps, apgd_steps=20),
                                  **kwargs)
  # Masking fools APGD (it does much worse than on the unmasked model) but
  # not Square, and the cascade reports the lower number.
  assert white.robust_acc >= clean_model.robust_acc + 0.2
  assert both.robust_acc <= white.robust_acc - 0.2
  assert both.by_attack[-1]["robust_acc"] == both.robust_acc


def test_rand_version_runs_eot_on_a_randomised_model(trained):
  model, variables, x, y = trained

  def noisy(v, z, k):
    return model.apply(v, z + 0.01 * jax.random.normal(k, z.shape))

  cfg = aa.config_for("rand", apgd_steps=5, eot_iter=3)
  assert cfg.attack_list() == ("apgd-ce", "apgd-dlr") and cfg.eot_iter == 3
  assert aa.config_for("rand").eot_iter == 20
  assert cfg.randomised and not aa.config_for("standard").randomised
  result = aa.run_autoattack(noisy, variables, x[:16], y[:16], cfg,
                             mesh=sharding.make_mesh(1), batch_size=16)
  assert result.robust_acc <= 0.1


# ---------------------------------------------------------------------------
# Randomised models: fresh randomness per point and per forward pass.


def _noisy_linear(sigma=0.2, n=64, seed=0):
  """A linear 3-class model on 8x8x3 inputs that adds N(0, sigma) noise
  drawn from its key to the input (about 17% of clean predictions flip per
  forward pass), and points it classifies correctly without noise."""
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 3)) / 8, jnp.float32)
  x = rng.uniform(size=(n, 8, 8, 3)).astype(np.float32)
  y = np.asarray(jnp.argmax(x.reshape(n, -1) @ w, -1)).astype(np.int32)

  def apply(v, z, key):
    z = z + sigma * jax.random.normal(key, z.shape)
    return z.reshape(z.shape[0], -1) @ v["w"]

  return apply, {"w": w}, x, y


RAND_SHORT = dict(apgd_steps=2, eot_iter=2)


def test_rand_result_does_not_depend_on_batch_size_or_devices():
  apply, variables, x, y = _noisy_linear()
  cfg = aa.config_for("rand", eps=2 / 255, **RAND_SHORT)
  small = aa.run_autoattack(apply, variables, x, y, cfg, chunk_size=2,
                            mesh=sharding.make_mesh(1), batch_size=16)
  large = aa.run_autoattack(apply, variables, x, y, cfg, chunk_size=2,
                            mesh=sharding.make_mesh(8), batch_size=64)
  # The noise is large enough to matter: not every clean pass is right,
  # and the attacks leave some points robust.
  assert 0.5 < small.clean_acc < 1.0
  assert 0.0 < small.robust_acc < small.clean_acc
  np.testing.assert_array_equal(small.clean_correct, large.clean_correct)
  np.testing.assert_array_equal(small.robust, large.robust)
  np.testing.assert_allclose(small.x_adv, large.x_adv, atol=1e-6)
  assert ([r["robust_points"] for r in small.by_attack]
          == [r["robust_points"] for r in large.by_attack])


def test_rand_each_fresh_check_draws_new_randomness():
  """A model that is pure noise: each forward pass is right with p = 1/2.

  Classes 0 and 1 get N(0, 1) logits, class 2 (there for DLR, which needs
  three classes) a logit of -10 that never wins. The input is ignored, so an
  attack cannot move it: a fresh check breaks a point exactly when that
  check's own draw says so. With fresh randomness per pass, each check
  breaks about half of the points still robust (clean 1/2, then 1/4, then
  1/8); a check that reused the clean pass's draw of a point would break
  none. The per-point outcome is the same for any batch size.
  """
  n = 256

  def pure_noise(v, z, key):
    del v
    noise = jax.random.normal(key, (z.shape[0], 2))
    return jnp.concatenate([noise, jnp.full((z.shape[0], 1), -10.0)], -1)

  x = np.full((n, 2, 2, 1), 0.5, np.float32)
  y = np.zeros(n, np.int32)
  cfg = aa.config_for("rand", **RAND_SHORT)
  runs = [aa.run_autoattack(pure_noise, {}, x, y, cfg, chunk_size=2,
                            mesh=sharding.make_mesh(1), batch_size=size)
          for size in (32, 16)]
  for run in runs:
    counts = [int(run.clean_correct.sum())] + [
        r["robust_points"] for r in run.by_attack]
    assert 0.4 * n < counts[0] < 0.6 * n, counts
    for before, after in zip(counts, counts[1:]):
      assert 0.3 * before < after < 0.7 * before, counts
  np.testing.assert_array_equal(runs[0].clean_correct, runs[1].clean_correct)
  np.testing.assert_array_equal(runs[0].robust, runs[1].robust)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=1.5), "outside \\[0, 1\\]"),
    (dict(norm="l1"), "unknown norm"),
    (dict(version="plus"), "unknown version"),
    (dict(version="custom"), "needs attacks"),
    (dict(version="custom", attacks=("pgd",)), "unknown attack"),
    (dict(attacks=("square",)), "only applies"),
    (dict(apgd_steps=0), "apgd_steps must be >= 1"),
])
def test_bad_configs_fail_with_one_line(kwargs, message):
  version = kwargs.pop("version", "standard")
  with pytest.raises(ConfigError, match=message):
    aa.config_for(version, **kwargs)


# ---------------------------------------------------------------------------
# The autoattack task through launch.py.


def _launch(tmp_path, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                         *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A 6-step smoke training run of the small CNN: a real checkpoint."""
  workdir = tmp_path_factory.mktemp("aa_ckpt")
  proc = _launch(workdir, "--config=configs/at.py:standard,smoke",
                 f"--workdir={workdir}", "--config.progress_bar=False")
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def test_autoattack_task_writes_a_report(tiny_checkpoint, tmp_path):
  out = tmp_path / "aa"
  proc = _launch(tmp_path, "--config=configs/autoattack.py:smoke,n=32",
                 f"--config.checkpoint_path={tiny_checkpoint}",
                 f"--workdir={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((out / "report.json").read_text())
  assert report["num_examples"] == 32 and report["version"] == "standard"
  assert report["norm"] == "linf" and report["eps"] == pytest.approx(8 / 255)
  assert list(report["robust_acc_after"]) == ["apgd-ce", "apgd-t", "fab-t",
                                              "square"]
  assert report["robust_acc"] <= report["clean_acc"]
  assert report["robust_acc"] == report["robust_acc_after"]["square"]
  assert report["max_perturbation"] <= 8 / 255 + 1e-6
  assert "wall_time_s" in report
  assert "autoattack apgd-ce: robust" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--config.autoattack.eps=2.0"], "outside [0, 1]"),
    (["--config.autoattack.norm=l3"], "unknown norm"),
    (["--config.num_examples=20000"], "holds 10000"),
    (["--config.checkpoint_path=/nonexistent"], "error:"),
])
def test_autoattack_task_bad_input(tiny_checkpoint, tmp_path, args, message):
  out = tmp_path / "aa_bad"
  base = [f"--config.checkpoint_path={tiny_checkpoint}"]
  proc = _launch(tmp_path, "--config=configs/autoattack.py:smoke",
                 f"--workdir={out}", *base, *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr
  assert not (out / "report.json").exists()


def test_autoattack_task_rejects_a_checkpoint_of_another_model(
    tiny_checkpoint, tmp_path):
  """Weights that do not fit the model the checkpoint names: one line."""
  from robustjax import checkpoint, models
  from robustjax.tasks import common
  restored = checkpoint.load(str(tiny_checkpoint))
  spec = dict(restored["meta"]["model"], width=0.5)
  with pytest.raises(ConfigError, match="does not fit its model"):
    common.check_fit(models.build_model(spec),
                     common.variables_of(restored), (32, 32, 3))
