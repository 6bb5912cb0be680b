"""Tests for robustjax.attacks: bounds, closed forms, restarts, jit, BN, errors.

Models are tiny and written in plain jnp (a linear classifier or a 2-layer
MLP on 4x4x3 images) so the whole file runs in well under a minute on two
CPU cores. Every property here can fail: bounds are checked with tight
tolerances, and the closed-form tests compare against the exact optimum.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import attacks
from robustjax.errors import ConfigError

SHAPE = (4, 4, 3)
DIM = int(np.prod(SHAPE))
EPS = 8 / 255
EPS_L2 = 0.5


# ---------------------------------------------------------------------------
# Tiny models and data.


def linear_fn(w: jax.Array, b: jax.Array):
  """``x [B, 4, 4, 3] -> x_flat @ w + b``, logits ``[B, C]``."""
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def init_mlp(key, num_classes=10, hidden=32):
  k1, k2 = jax.random.split(key)
  return {
      "w1": jax.random.normal(k1, (DIM, hidden)) * np.sqrt(2.0 / DIM),
      "b1": jnp.zeros(hidden),
      "w2": jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden),
      "b2": jnp.zeros(num_classes),
  }


def mlp_apply(params, x):
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def images(key, batch, low=0.0, high=1.0):
  return jax.random.uniform(key, (batch,) + SHAPE, minval=low, maxval=high)


@pytest.fixture(scope="module")
def mlp_setup():
  kp, kx, ky = jax.random.split(jax.random.key(0), 3)
  params = init_mlp(kp)
  # Scale up so a few attack steps flip some but not all predictions.
  params = jax.tree.map(lambda p: 4.0 * p, params)
  x = images(kx, 16)
  y = jax.random.randint(ky, (16,), 0, 10)
  return (lambda z: mlp_apply(params, z)), x, y


def assert_valid(x_adv, x, eps, norm):
  """Same shape/dtype, finite, inside [0, 1] and inside the eps ball."""
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  x_adv, x = np.asarray(x_adv), np.asarray(x)
  assert np.all(np.isfinite(x_adv))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  d = (x_adv - x).reshape(x.shape[0], -1)
  if norm == "linf":
    assert np.abs(d).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(d, axis=1).max() <= eps + 1e-5


# ---------------------------------------------------------------------------
# Losses.


def test_losses_on_hand_made_logits():
  z = jnp.array([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0]])
  y = jnp.array([0, 1])
  np.testing.assert_allclose(
      attacks.cross_entropy(z, y),
      optax.softmax_cross_entropy_with_integer_labels(z, y), rtol=1e-6)
  np.testing.assert_allclose(attacks.cw_margin(z, y), [1 - 3, 3 - 1])
  # DLR: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3); here z_pi1 - z_pi3 = 3.
  np.testing.assert_allclose(attacks.dlr(z, y), [-2 / 3, 2 / 3], rtol=1e-6)
  # Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = x / 3.5.
  np.testing.assert_allclose(
      attacks.targeted_dlr(z, y, jnp.array([1, 3])), [-2 / 3.5, -2 / 3.5],
      rtol=1e-6)
  assert set(attacks.LOSSES) == {"ce", "cw", "dlr"}


def test_dlr_is_shift_and_scale_invariant_and_gradients_finite():
  z = jax.random.normal(jax.random.key(1), (8, 10))
  y = jnp.arange(8)
  np.testing.assert_allclose(attacks.dlr(3.0 * z + 7.0, y), attacks.dlr(z, y),
                             rtol=1e-4, atol=1e-6)
  for name, fn in attacks.LOSSES.items():
    g = jax.grad(lambda v, fn=fn: jnp.sum(fn(v, y)))(z)
    assert np.all(np.isfinite(np.asarray(g))), name
    assert fn(z, y).shape == (8,)


def test_losses_reject_too_few_classes():
  z, y = jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32)
  with pytest.raises(ConfigError):
    attacks.dlr(z, y)
  with pytest.raises(ConfigError):
    attacks.targeted_dlr(jnp.zeros((2, 3)), y, y)


# ---------------------------------------------------------------------------
# Bounds and identity.

_TARGET_SHIFT = 3  # target = (y + 3) % 10, never the true class


def _run(name, fn, x, y, eps, key):
  """Runs the attack configuration ``name``; returns (x_adv, norm)."""
  t = (y + _TARGET_SHIFT) % 10
  linf = dict(eps=eps, step_size=eps / 4, steps=3)
  l2 = dict(eps=eps, step_size=eps / 4, steps=3, norm="l2")
  runs = {
      "fgsm": lambda: (attacks.fgsm(fn, x, y, eps=eps), "linf"),
      "fgsm_rs": lambda: (attacks.fgsm(fn, x, y, eps=eps, key=key,
                                       random_start=True), "linf"),
      "fgsm_cw": lambda: (attacks.fgsm(fn, x, y, eps=eps, loss="cw"), "linf"),
      "pgd_ce": lambda: (attacks.pgd(fn, x, y, key=key, **linf), "linf"),
      "pgd_cw": lambda: (attacks.pgd(fn, x, y, key=key, loss="cw", **linf),
                         "linf"),
      "pgd_dlr": lambda: (attacks.pgd(fn, x, y, key=key, loss="dlr", **linf),
                          "linf"),
      "pgd_restarts": lambda: (attacks.pgd(fn, x, y, key=key, restarts=3,
                                           **linf), "linf"),
      "pgd_no_random_start": lambda: (attacks.pgd(
          fn, x, y, key=None, random_start=False, **linf), "linf"),
      "l2_ce": lambda: (attacks.pgd(fn, x, y, key=key, **l2), "l2"),
      "l2_dlr": lambda: (attacks.pgd(fn, x, y, key=key, loss="dlr", **l2),
                         "l2"),
      "l2_restarts": lambda: (attacks.pgd(fn, x, y, key=key, restarts=2,
                                          loss="cw", **l2), "l2"),
      "targeted_ce": lambda: (attacks.pgd(fn, x, y, key=key, targeted=True,
                                          target=t, **linf), "linf"),
      "targeted_cw": lambda: (attacks.pgd(fn, x, y, key=key, targeted=True,
                                          target=t, loss="cw", **linf),
                              "linf"),
      "targeted_dlr_l2": lambda: (attacks.pgd(fn, x, y, key=key,
                                              targeted=True, target=t,
                                              loss="dlr", **l2), "l2"),
      "engine_normal_init": lambda: (attacks.projected_gradient_ascent(
          lambda z: attacks.cross_entropy(fn(z), y), x, key=key, eps=eps,
          step_size=eps / 4, steps=2, init="normal"), "linf"),
      "engine_l2_uniform": lambda: (attacks.projected_gradient_ascent(
          lambda z: attacks.cross_entropy(fn(z), y), x, key=key, eps=eps,
          step_size=eps / 4, steps=0, norm="l2"), "l2"),
  }
  return runs[name]()


ATTACK_NAMES = [
    "fgsm", "fgsm_rs", "fgsm_cw", "pgd_ce", "pgd_cw", "pgd_dlr",
    "pgd_restarts", "pgd_no_random_start", "l2_ce", "l2_dlr", "l2_restarts",
    "targeted_ce", "targeted_cw", "targeted_dlr_l2", "engine_normal_init",
    "engine_l2_uniform"
]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_outputs_inside_ball_and_box(name, mlp_setup):
  fn, x, y = mlp_setup
  key = jax.random.key(7)
  # Large radii so the [0, 1] box binds on many pixels of uniform images.
  eps = EPS_L2 if name.startswith(("l2", "engine_l2", "targeted_dlr_l2")) \
      else 4 * EPS
  x_adv, norm = _run(name, fn, x, y, eps, key)
  assert_valid(x_adv, x, eps, norm)
  if name != "engine_l2_uniform":  # steps=0 there: only the random start
    assert not np.array_equal(np.asarray(x_adv), np.asarray(x))


@pytest.mark.parametrize("name", [
    "fgsm", "fgsm_rs", "pgd_ce", "pgd_restarts", "l2_ce", "l2_restarts",
    "targeted_dlr_l2", "engine_normal_init", "engine_l2_uniform"
])
def test_eps_zero_is_identity(name, mlp_setup):
  fn, x, y = mlp_setup
  x_adv, _ = _run(name, fn, x, y, 0.0, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


# ---------------------------------------------------------------------------
# Closed-form answers on a binary linear classifier z = x W + b.


@pytest.fixture(scope="module")
def binary_linear():
  kw, kb, kx, ky = jax.random.split(jax.random.key(42), 4)
  w = jax.random.normal(kw, (DIM, 2))
  b = jax.random.normal(kb, (2,))
  # Well inside (0, 1) so the box never binds for the radii used below.
  x = images(kx, 8, 0.3, 0.7)
  y = jax.random.randint(ky, (8,), 0, 2)
  # u[b] = w_j - w_y with j the other class: the margin's constant gradient.
  u = (w[:, 1] - w[:, 0])[None, :] * jnp.where(y == 0, 1.0, -1.0)[:, None]
  return w, b, x, y, u


def _margin(fn, x, y):
  return np.asarray(attacks.cw_margin(fn(x), y))


@pytest.mark.parametrize("random_start", [False, True])
def test_linf_pgd_cw_finds_closed_form_optimum(binary_linear, random_start):
  w, b, x, y, u = binary_linear
  fn, eps = linear_fn(w, b), 0.05
  x_adv = attacks.pgd(fn, x, y, key=jax.random.key(0), eps=eps,
                      step_size=eps / 4, steps=12, loss="cw",
                      random_start=random_start)
  # The maximiser of the linear margin over the Linf ball is eps*sign(u).
  delta = np.asarray(x_adv - x).reshape(8, -1)
  np.testing.assert_allclose(delta, eps * np.sign(np.asarray(u)), atol=1e-6)
  gain = _margin(fn, x_adv, y) - _margin(fn, x, y)
  np.testing.assert_allclose(gain, eps * np.abs(np.asarray(u)).sum(1),
                             rtol=1e-4, atol=1e-4)


def test_fgsm_is_exact_on_binary_linear(binary_linear):
  # For two classes the CE gradient is p_j (w_j - w_y): same sign as u.
  w, b, x, y, u = binary_linear
  eps = 0.05
  x_adv = attacks.fgsm(linear_fn(w, b), x, y, eps=eps)
  np.testing.assert_allclose(np.asarray(x_adv - x).reshape(8, -1),
                             eps * np.sign(np.asarray(u)), atol=1e-6)


@pytest.mark.parametrize("random_start,step_ratio,steps",
                         [(False, 0.5, 4), (True, 2.0, 20)])
def test_l2_pgd_reaches_closed_form_optimum(binary_linear, random_start,
                                            step_ratio, steps):
  w, b, x, y, u = binary_linear
  fn, eps = linear_fn(w, b), 0.25  # max |delta_i| <= 0.25: box never binds
  x_adv = attacks.pgd(fn, x, y, key=jax.random.key(1), eps=eps,
                      step_size=step_ratio * eps, steps=steps, norm="l2",
                      loss="cw", random_start=random_start)
  assert_valid(x_adv, x, eps, "l2")
  gain = _margin(fn, x_adv, y) - _margin(fn, x, y)
  # From a random start the off-direction part shrinks by 1/3 per step.
  np.testing.assert_allclose(gain, eps * np.linalg.norm(np.asarray(u), axis=1),
                             rtol=1e-4)


# ---------------------------------------------------------------------------
# Restarts and targeted mode.


def test_restarts_never_weaker(mlp_setup):
  fn, _, _ = mlp_setup
  kx, ky = jax.random.split(jax.random.key(5))
  x, y = images(kx, 64), jax.random.randint(ky, (64,), 0, 10)
  kw = dict(key=jax.random.key(11), eps=EPS, step_size=EPS / 4, steps=2)
  x1 = attacks.pgd(fn, x, y, restarts=1, **kw)
  x5 = attacks.pgd(fn, x, y, restarts=5, **kw)
  s1 = np.asarray(attacks.attack_success(fn, x1, y))
  s5 = np.asarray(attacks.attack_success(fn, x5, y))
  assert 0 < s1.sum() < len(s1), "pick eps so that restarts can matter"
  assert np.all(s5 >= s1)  # restart 0 of restarts=5 is the restarts=1 run
  assert s5.sum() >= s1.sum()
  # Where neither fooled the model, restarts kept the highest loss.
  l1 = np.asarray(attacks.cross_entropy(fn(x1), y))
  l5 = np.asarray(attacks.cross_entropy(fn(x5), y))
  assert np.all(l5[~s5] >= l1[~s5])


def test_restart_selection_matches_numpy_oracle(mlp_setup):
  """Per example: the first successful restart, else the highest loss."""
  fn, _, _ = mlp_setup
  kx, ky = jax.random.split(jax.random.key(5))
  x, y = images(kx, 64), jax.random.randint(ky, (64,), 0, 10)
  key, restarts = jax.random.key(11), 4
  kw = dict(eps=EPS, step_size=EPS / 4, steps=2)
  out = np.asarray(attacks.pgd(fn, x, y, key=key, restarts=restarts, **kw))
  # Rebuild each restart with the documented key derivation fold_in(key, r).
  runs = [np.asarray(attacks.projected_gradient_ascent(
      lambda z: attacks.cross_entropy(fn(z), y), x,
      key=jax.random.fold_in(key, r), **kw)) for r in range(restarts)]
  success = np.stack([np.asarray(attacks.attack_success(fn, r, y))
                      for r in runs])
  loss = np.stack([np.asarray(attacks.cross_entropy(fn(r), y)) for r in runs])
  pick = np.where(success.any(0), np.argmax(success, 0), np.argmax(loss, 0))
  expected = np.stack(runs)[pick, np.arange(len(y))]
  # The two rules differ somewhere, or this test could not tell them apart.
  assert np.any(pick != np.argmax(loss, 0))
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("loss", ["ce", "cw", "dlr"])
def test_targeted_on_linear_model(loss):
  kw, kx, kt = jax.random.split(jax.random.key(9), 3)
  w = jax.random.normal(kw, (DIM, 10))
  fn = linear_fn(w, jnp.zeros(10))
  x = images(kx, 16, 0.25, 0.75)
  y = jnp.argmax(fn(x), axis=-1)  # correctly classified to start with
  t = (y + jax.random.randint(kt, (16,), 1, 10)) % 10
  # eps = 0.5 lets every pixel reach either edge of the box, so every target
  # is reachable; fixed-size sign steps need that slack on the CW margin,
  # whose subgradient zigzags between near-tied runner-up classes.
  eps = 0.5
  x_adv = attacks.pgd(fn, x, y, key=jax.random.key(2), eps=eps,
                      step_size=eps / 5, steps=20, loss=loss, targeted=True,
                      target=t)
  assert_valid(x_adv, x, eps, "linf")
  assert not np.any(np.asarray(attacks.attack_success(fn, x, y, t)))
  if loss == "dlr":
    # Targeted DLR (APGD-T's loss) only pushes z_t above z_y, not above every
    # class: like APGD-T it is a misclassification attack steered by t.
    assert np.all(np.asarray(attacks.attack_success(fn, x_adv, y)))
  else:
    assert np.all(np.asarray(attacks.attack_success(fn, x_adv, y, t)))


# ---------------------------------------------------------------------------
# Determinism, jit, sharding.


def test_same_key_is_bit_identical_and_jit_works(mlp_setup, binary_linear):
  fn, x, y = mlp_setup
  kw = dict(eps=EPS, step_size=EPS / 4, steps=3, restarts=2, loss="dlr")
  a = attacks.pgd(fn, x, y, key=jax.random.key(1), **kw)
  b = attacks.pgd(fn, x, y, key=jax.random.key(1), **kw)
  c = attacks.pgd(fn, x, y, key=jax.random.key(2), **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(x, y, key):
    return attacks.pgd(fn, x, y, key=key, **kw)

  j1 = jitted(x, y, jax.random.key(1))
  j2 = jitted(x, y, jax.random.key(1))
  jitted(x, y, jax.random.key(2))  # a new key must not retrace
  np.testing.assert_array_equal(np.asarray(j1), np.asarray(j2))
  assert_valid(j1, x, EPS, "linf")

  # jit and eager agree where the answer is unambiguous (constant gradient).
  w, bias, xb, yb, _ = binary_linear
  lin = linear_fn(w, bias)
  kl = dict(key=jax.random.key(4), eps=0.05, step_size=0.02, steps=5,
            loss="cw", restarts=2)
  eager = attacks.pgd(lin, xb, yb, **kl)
  jit_out = jax.jit(lambda x, y: attacks.pgd(lin, x, y, **kl))(xb, yb)
  np.testing.assert_allclose(np.asarray(jit_out), np.asarray(eager),
                             atol=1e-6)


def test_sharded_batch_gives_same_result(binary_linear):
  w, b, x, y, _ = binary_linear
  fn = linear_fn(w, b)
  mesh = jax.make_mesh((8,), ("data",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  step = jax.jit(lambda x, y, k: attacks.pgd(
      fn, x, y, key=k, eps=0.05, step_size=0.01, steps=3, loss="ce"))
  ref = step(x, y, jax.random.key(6))
  out = step(jax.device_put(x, shard), jax.device_put(y, shard),
             jax.random.key(6))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)


# ---------------------------------------------------------------------------
# BatchNorm statistics are never touched.


class _BNNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(16, name="dense1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5,
                     name="bn")(x)
    return nn.Dense(10, name="head")(nn.relu(x))


def test_attack_leaves_batch_stats_untouched():
  model = _BNNet()
  kx, ky = jax.random.split(jax.random.key(8))
  x, y = images(kx, 8), jax.random.randint(ky, (8,), 0, 10)
  variables = model.init(jax.random.key(0), x, train=False)
  # One train-mode pass so the running statistics are not the trivial init.
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  variables = {**variables, **updates}
  before = jax.tree.map(np.array, variables["batch_stats"])

  logits_fn = lambda z: model.apply(variables, z, train=False)
  x_adv = jax.jit(lambda x, y: attacks.pgd(
      logits_fn, x, y, key=None, random_start=False, eps=EPS,
      step_size=EPS / 4, steps=3))(x, y)
  assert_valid(x_adv, x, EPS, "linf")
  chex.assert_trees_all_equal(before, variables["batch_stats"])
  # Inference-mode BN treats examples independently: half the batch gets
  # the same adversarial examples (train-mode BN would mix the batch).
  half = attacks.pgd(logits_fn, x[:4], y[:4], key=None, random_start=False,
                     eps=EPS, step_size=EPS / 4, steps=3)
  np.testing.assert_allclose(np.asarray(half), np.asarray(x_adv[:4]),
                             atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises_config_error(mlp_setup):
  fn, x, y = mlp_setup
  key = jax.random.key(0)
  kw = dict(key=key, eps=EPS, step_size=EPS / 4, steps=2)
  bad = [
      lambda: attacks.pgd(fn, x, y, **{**kw, "eps": 1.5}),
      lambda: attacks.pgd(fn, x, y, **{**kw, "eps": -0.1}),
      lambda: attacks.pgd(fn, x, y, **{**kw, "steps": -1}),
      lambda: attacks.pgd(fn, x, y, restarts=0, **kw),
      lambda: attacks.pgd(fn, x, y, norm="l3", **kw),
      lambda: attacks.pgd(fn, x, y, loss="foo", **kw),
      lambda: attacks.pgd(fn, x, y, targeted=True, **kw),
      lambda: attacks.pgd(fn, x, y, target=y, **kw),
      lambda: attacks.pgd(fn, x, y, **{**kw, "key": None}),
      lambda: attacks.fgsm(fn, x, y, eps=1.5),
      lambda: attacks.fgsm(fn, x, y, eps=EPS, loss="foo"),
      lambda: attacks.fgsm(fn, x, y, eps=EPS, random_start=True),
      lambda: attacks.projected_gradient_ascent(
          lambda z: fn(z)[:, 0], x, key=key, eps=EPS, step_size=0.1,
          steps=1, init="gaussian"),
      # eps traced under jit: hyper-parameters must be static.
      lambda: jax.jit(lambda e: attacks.pgd(fn, x, y, **{**kw, "eps": e}))(
          0.1),
      # Validation also fires at trace time inside the caller's jit.
      lambda: jax.jit(lambda x: attacks.pgd(fn, x, y, **{**kw, "eps": 1.5}))(
          x),
  ]
  for i, make in enumerate(bad):
    with pytest.raises(ConfigError) as err:
      make()
    msg = str(err.value)
    assert msg and "\n" not in msg, (i, msg)


# ---------------------------------------------------------------------------
# Iterative attacks are at least as strong as single-step on a trained MLP.


def test_pgd_not_weaker_than_fgsm_on_trained_mlp():
  kd, kv, kp, kt = jax.random.split(jax.random.key(12), 4)
  n_train, n_test, classes = 512, 256, 4
  v = jax.random.normal(kv, (DIM, classes))

  def make(key, n):
    x = jnp.clip(0.5 + 0.15 * jax.random.normal(key, (n,) + SHAPE), 0, 1)
    return x, jnp.argmax((x - 0.5).reshape(n, -1) @ v, axis=-1)

  (xtr, ytr), (xte, yte) = make(kd, n_train), make(kt, n_test)
  params = init_mlp(kp, num_classes=classes)
  opt = optax.adam(1e-2)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      grads = jax.grad(lambda p: jnp.mean(attacks.cross_entropy(
          mlp_apply(p, xtr), ytr)))(params)
      updates, state = opt.update(grads, state)
      return (optax.apply_updates(params, updates), state), None
    carry = (params, opt.init(params))
    return jax.lax.scan(step, carry, None, length=150)[0][0]

  params = train(params)
  fn = lambda z: mlp_apply(params, z)
  acc = lambda xa: float(jnp.mean(jnp.argmax(fn(xa), -1) == yte))
  clean = acc(xte)
  assert clean > 0.75, clean  # chance is 0.25
  eps = 4 / 255
  fgsm_acc = acc(attacks.fgsm(fn, xte, yte, eps=eps))
  pgd_acc = acc(attacks.pgd(fn, xte, yte, key=jax.random.key(0), eps=eps,
                            step_size=eps / 4, steps=10))
  # The attack must bite at this eps for the comparison to mean anything.
  assert pgd_acc <= fgsm_acc < clean, (clean, fgsm_acc, pgd_acc)


@pytest.mark.parametrize("norm,init_kw", [("linf", {}), ("l2", {})])
def test_per_example_keys_make_results_independent_of_batching(mlp_setup,
                                                               norm, init_kw):
  """With one key per example, attacking a sub-batch gives exactly the rows
  of the full-batch attack (what evaluation relies on for batch-size and
  device-count invariance); restarts included."""
  fn, x, y = mlp_setup
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(7),
                                                 jnp.arange(16))
  eps = EPS if norm == "linf" else EPS_L2
  kw = dict(eps=eps, step_size=eps / 4, steps=3, norm=norm, restarts=2,
            **init_kw)
  full = attacks.pgd(fn, x, y, key=keys, **kw)
  assert_valid(full, x, eps, norm)
  for rows in (slice(0, 5), slice(5, 16), np.array([15, 3, 8])):
    part = attacks.pgd(fn, x[rows], y[rows], key=keys[rows], **kw)
    np.testing.assert_allclose(np.asarray(part), np.asarray(full)[rows],
                               atol=1e-6)
  # A different example order, same keys per example: same rows.
  perm = np.random.default_rng(0).permutation(16)
  permuted = attacks.pgd(fn, x[perm], y[perm], key=keys[perm], **kw)
  np.testing.assert_allclose(np.asarray(permuted), np.asarray(full)[perm],
                             atol=1e-6)
  # One shared key would not have this property (the draws depend on B).
  shared = attacks.pgd(fn, x, y, key=jax.random.key(7), **kw)
  assert not np.allclose(np.asarray(shared), np.asarray(full))


def test_per_example_keys_of_wrong_shape_are_refused(mlp_setup):
  fn, x, y = mlp_setup
  keys = jax.random.split(jax.random.key(0), 3)
  with pytest.raises(ConfigError, match="one per example"):
    attacks.pgd(fn, x, y, key=keys, eps=EPS, step_size=EPS, steps=1)
