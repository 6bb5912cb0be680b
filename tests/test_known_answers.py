"""Known answers for the training objectives and the attack steps.

Every formula is recomputed here, independently, in float64 numpy written
from the reference's own formula (trades.py, mart.py, train_fgsm.py,
robust_overfitting's attack_pgd, autopgd_base.py, fab_pt.py, square.py), on
fixed tiny inputs: a two-layer network with BatchNorm for the objectives'
values, gradients and running statistics, linear and tanh networks whose
input gradients have closed forms for the attacks. Only the random draws
(start points) are taken from JAX with the same keys; the maths is not.

Gradients of the objectives are checked against central finite differences
of the numpy transcription, so a wrong constant, a missing term or a pass in
the wrong BatchNorm mode changes a number these tests compare.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import apgd, fab, losses, square
from robustjax.attacks import pgd as pgd_attack
from robustjax.training import objectives

BN_MOMENTUM = 0.9
BN_EPS = 1e-5
HIDDEN = 5
CLASSES = 3


# ------------------------------------------------------------ numpy helpers


def _softmax(z: np.ndarray) -> np.ndarray:
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
  """F.cross_entropy(z, y) (mean over the batch)."""
  return -np.mean(_log_softmax(z)[np.arange(len(y)), y])


def _numeric_grad(f, flat: np.ndarray, h: float = 1e-6) -> np.ndarray:
  """Central differences of scalar ``f`` at ``flat`` (float64)."""
  g = np.zeros_like(flat)
  for i in range(flat.size):
    e = np.zeros_like(flat)
    e[i] = h
    g[i] = (f(flat + e) - f(flat - e)) / (2 * h)
  return g


# ------------------------------------------- a tiny network with BatchNorm


class _TinyBN(nn.Module):
  """flatten - dense(5) - BatchNorm - tanh - dense(3)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(HIDDEN, name="dense")(x.reshape((x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                     epsilon=BN_EPS, name="bn")(h)
    return nn.Dense(CLASSES, name="head")(jnp.tanh(h))


_PARAM_SHAPES = (("dense", "kernel", (4, HIDDEN)), ("dense", "bias", (HIDDEN,)),
                 ("bn", "scale", (HIDDEN,)), ("bn", "bias", (HIDDEN,)),
                 ("head", "kernel", (HIDDEN, CLASSES)),
                 ("head", "bias", (CLASSES,)))


def _unflat(flat: np.ndarray) -> dict:
  params, i = {}, 0
  for layer, name, shape in _PARAM_SHAPES:
    n = int(np.prod(shape))
    params.setdefault(layer, {})[name] = flat[i:i + n].reshape(shape)
    i += n
  return params


def _flat(params) -> np.ndarray:
  return np.concatenate([np.asarray(params[l][n], np.float64).ravel()
                         for l, n, _ in _PARAM_SHAPES])


def _np_train_forward(p: dict, x: np.ndarray):
  """Train-mode forward: ``(logits, batch mean, biased batch variance)``."""
  h = x.reshape(len(x), -1) @ p["dense"]["kernel"] + p["dense"]["bias"]
  mean, var = h.mean(0), h.var(0)
  h = (h - mean) / np.sqrt(var + BN_EPS) * p["bn"]["scale"] + p["bn"]["bias"]
  return np.tanh(h) @ p["head"]["kernel"] + p["head"]["bias"], mean, var


def _np_update(stats: dict, mean: np.ndarray, var: np.ndarray) -> dict:
  m = BN_MOMENTUM
  return {"mean": m * stats["mean"] + (1 - m) * mean,
          "var": m * stats["var"] + (1 - m) * var}


# The references' losses, transcribed (p: params, s: running statistics).


def _np_ce_on(inputs_of):
  def loss(p, s, x, x_adv, y):
    logits, mean, var = _np_train_forward(p, inputs_of(x, x_adv))
    return _cross_entropy(logits, y), _np_update(s, mean, var), {}
  return loss


def _np_trades(beta):
  def loss(p, s, x, x_adv, y):
    # trades.py: CE(model(x)) + beta / B * KLDivLoss(sum)(log_softmax(
    # model(x_adv)), softmax(model(x))); train-mode passes natural, adv,
    # natural.
    nat, m1, v1 = _np_train_forward(p, x)
    adv, m2, v2 = _np_train_forward(p, x_adv)
    s = _np_update(_np_update(_np_update(s, m1, v1), m2, v2), m1, v1)
    target = _softmax(nat)
    kl = np.sum(target * (np.log(target) - _log_softmax(adv))) / len(y)
    natural = _cross_entropy(nat, y)
    return natural + beta * kl, s, {"natural_loss": natural,
                                    "robust_loss": kl}
  return loss


def _np_mart(beta):
  def loss(p, s, x, x_adv, y):
    # mart.py: passes natural then adversarial.
    nat, m1, v1 = _np_train_forward(p, x)
    adv, m2, v2 = _np_train_forward(p, x_adv)
    s = _np_update(_np_update(s, m1, v1), m2, v2)
    rows = np.arange(len(y))
    adv_probs = _softmax(adv)
    tmp1 = np.argsort(adv_probs, axis=1)[:, -2:]
    new_y = np.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = _cross_entropy(adv, y) - np.mean(
        np.log(1.0001 - adv_probs + 1e-12)[rows, new_y])
    nat_probs = _softmax(nat)
    true_probs = nat_probs[rows, y]
    # nn.KLDivLoss(reduction='none')(log(adv_probs + 1e-12), nat_probs).
    kl = np.sum(nat_probs * (np.log(nat_probs) - np.log(adv_probs + 1e-12)), 1)
    loss_robust = np.sum(kl * (1.0000001 - true_probs)) / len(y)
    return loss_adv + beta * loss_robust, s, {"adv_loss": loss_adv,
                                              "robust_loss": loss_robust}
  return loss


_OBJECTIVES = {
    "standard": _np_ce_on(lambda x, x_adv: x),
    "pgd_at": _np_ce_on(lambda x, x_adv: x_adv),
    "fgsm_rs": _np_ce_on(lambda x, x_adv: x_adv),
    "trades": _np_trades(6.0),
    "mart": _np_mart(6.0),
}


@pytest.fixture(scope="module")
def objective_inputs():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 0.8, (6, 2, 2, 1))
  x_adv = np.clip(x + rng.uniform(-0.3, 0.3, x.shape), 0, 1)
  y = np.array([0, 1, 2, 0, 2, 1])
  flat = rng.normal(0, 0.8, sum(int(np.prod(s)) for _, _, s in _PARAM_SHAPES))
  stats = {"mean": rng.normal(0, 0.1, HIDDEN),
           "var": rng.uniform(0.5, 1.5, HIDDEN)}
  return x, x_adv, y, flat.astype(np.float32).astype(np.float64), stats


@pytest.mark.parametrize("name", sorted(_OBJECTIVES))
def test_objective_value_gradient_and_statistics(name, objective_inputs):
  """Each objective's loss, its gradient in the parameters, its metrics and
  the running statistics its BatchNorm passes leave equal the reference's."""
  x, x_adv, y, flat, stats = objective_inputs
  model = _TinyBN()
  params = objectives.reference_params(name, beta=6.0)
  objective = objectives.make_objective(params, model)
  jparams = jax.tree.map(jnp.float32, _unflat(flat))
  jstats = {"bn": jax.tree.map(jnp.float32, stats)}
  jx, jx_adv = jnp.float32(x), jnp.float32(x_adv)
  x_adv_arg = None if name == "standard" else jx_adv

  def loss(p):
    return objective.loss(p, jstats, jx, x_adv_arg, jnp.asarray(y))

  (value, (new_stats, metrics)), grad = jax.value_and_grad(
      loss, has_aux=True)(jparams)
  reference = _OBJECTIVES[name]
  want, want_stats, want_metrics = reference(_unflat(flat), stats, x, x_adv, y)

  np.testing.assert_allclose(float(value), want, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=2e-6,
                             atol=1e-6)
  for key, v in want_metrics.items():
    np.testing.assert_allclose(float(metrics[key]), v, rtol=2e-6, atol=1e-6,
                               err_msg=key)
  want_grad = _numeric_grad(
      lambda f: reference(_unflat(f), stats, x, x_adv, y)[0], flat)
  np.testing.assert_allclose(_flat(grad), want_grad, rtol=1e-4, atol=2e-6)
  for key in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(new_stats["bn"][key]),
                               want_stats[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)


def test_trades_and_mart_use_the_configured_beta(objective_inputs):
  """The robust term's weight is the config's beta (1 and 6 differ by
  exactly 5 robust losses)."""
  x, x_adv, y, flat, stats = objective_inputs
  jparams = jax.tree.map(jnp.float32, _unflat(flat))
  jstats = {"bn": jax.tree.map(jnp.float32, stats)}
  for name in ("trades", "mart"):
    values = {}
    for beta in (1.0, 6.0):
      objective = objectives.make_objective(
          objectives.reference_params(name, beta=beta), _TinyBN())
      loss, (_, metrics) = objective.loss(jparams, jstats, jnp.float32(x),
                                          jnp.float32(x_adv), jnp.asarray(y))
      values[beta] = (float(loss), float(metrics["robust_loss"]))
    assert values[6.0][1] > 1e-3, name
    np.testing.assert_allclose(values[6.0][0] - values[1.0][0],
                               5 * values[6.0][1], rtol=1e-4, err_msg=name)


# ------------------------------------------------- losses the attacks use


@pytest.fixture(scope="module")
def logits_and_labels():
  rng = np.random.default_rng(1)
  z = rng.normal(0, 2, (7, 5))
  y = rng.integers(0, 5, 7)
  target = (y + 1 + rng.integers(0, 4, 7)) % 5
  return z.astype(np.float32).astype(np.float64), y, target


def test_attack_losses_match_their_formulas(logits_and_labels):
  """CE, CW margin, DLR, targeted DLR and KL against numpy (autopgd_base.py's
  dlr_loss and dlr_loss_targeted)."""
  z, y, t = logits_and_labels
  rows = np.arange(len(y))
  srt = np.sort(z, 1)
  z_y = z[rows, y]
  other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(1)
  want = {
      "ce": -_log_softmax(z)[rows, y],
      "cw": other - z_y,
      # -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)
      "dlr": -(z_y - other) / (srt[:, -1] - srt[:, -3] + 1e-12),
  }
  jz, jy = jnp.float32(z), jnp.asarray(y)
  for name, value in want.items():
    np.testing.assert_allclose(np.asarray(losses.LOSSES[name](jz, jy)), value,
                               rtol=1e-5, atol=1e-6, err_msg=name)
  targeted = -(z_y - z[rows, t]) / (
      srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)
  np.testing.assert_allclose(
      np.asarray(losses.targeted_dlr(jz, jy, jnp.asarray(t))), targeted,
      rtol=1e-5, atol=1e-6)
  q = z[::-1].copy()
  kl = np.sum(_softmax(z) * (_log_softmax(z) - _log_softmax(q)), 1)
  np.testing.assert_allclose(
      np.asarray(losses.kl_divergence(jz, jnp.float32(q))), kl, rtol=1e-5,
      atol=1e-6)


# ------------------------------------------------ attacks of the objectives


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(CLASSES, name="head")(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def linear_problem():
  rng = np.random.default_rng(2)
  x = rng.uniform(0.0, 1.0, (5, 2, 2, 2)).astype(np.float32)
  x[0, 0, 0] = 0.0  # points on the box's faces test the [0, 1] clip
  x[1, 1, 1] = 1.0
  y = np.array([0, 1, 2, 1, 0])
  w = rng.normal(0, 1, (8, CLASSES)).astype(np.float32)
  b = rng.normal(0, 0.5, CLASSES).astype(np.float32)
  return x, y, w, b


def _np_linear_input_grad(x, w, b, loss_grad_at_logits):
  """d sum(loss) / d x for ``logits = flatten(x) @ w + b``."""
  z = x.reshape(len(x), -1).astype(np.float64) @ w + b
  return (loss_grad_at_logits(z) @ w.T).reshape(x.shape)


def _ce_logit_grad(y):
  return lambda z: _softmax(z) - np.eye(z.shape[1])[y]


def _kl_logit_grads(x_clean, w, b):
  """d KL(p || q) / d z_adv (TRADES's attack objective, p the clean
  softmax held fixed) and, for contrast, d KL(q || p) / d z_adv."""
  p = _softmax(x_clean.reshape(len(x_clean), -1) @ w + b)

  def forward(z):
    return _softmax(z) - p

  def reverse(z):
    q = _softmax(z)
    ratio = np.log(q) - np.log(p)
    return q * (ratio - np.sum(q * ratio, 1, keepdims=True))

  return forward, reverse


@pytest.mark.parametrize("name,steps,step_size,eps", [
    # train_fgsm.py: alpha = 10/255 at eps 8/255
    ("fgsm_rs", 1, 10 / 255, 8 / 255),
    ("pgd_at", 5, 2 / 255, 8 / 255),    # attack_pgd of train_cifar.py
    ("mart", 5, 2 / 255, 8 / 255),      # mart.py: CE-PGD from x + 0.001 N
    ("trades", 5, 2 / 255, 8 / 255),    # trades.py: KL-PGD from x + 0.001 N
    # far from the clean point, where KL's two directions disagree
    ("trades", 5, 0.06, 0.3),
])
def test_objective_attack_steps(name, steps, step_size, eps, linear_problem):
  """The objectives' attacks against the reference loops, step by step:
  start, signed step on the right loss, projection to eps, clip to [0, 1]."""
  x, y, w, b = linear_problem
  params = objectives.reference_params(name, eps=eps, step_size=step_size,
                                       steps=steps)
  objective = objectives.make_objective(params, _Linear())
  variables = {"params": {"head": {"kernel": w, "bias": b}}}
  key = jax.random.key(3)
  got = np.asarray(objective.attack(variables, jnp.asarray(x),
                                    jnp.asarray(y), key))

  x64 = x.astype(np.float64)
  start = params["attack"]["start"]
  start_key = jax.random.fold_in(key, 0) if name == "pgd_at" else key
  if start == "uniform":
    delta = np.asarray(jax.random.uniform(start_key, x.shape, jnp.float32,
                                          -eps, eps), np.float64)
  else:
    delta = 0.001 * np.asarray(jax.random.normal(start_key, x.shape,
                                                 jnp.float32), np.float64)
  # The start inside the box: the references clamp delta to [-X, 1 - X].
  x_start = np.clip(x64 + np.clip(delta, -eps, eps), 0.0, 1.0)

  def run(logit_grad):
    x_adv = x_start
    for _ in range(steps):
      g = _np_linear_input_grad(x_adv, w, b, logit_grad)
      assert np.min(np.abs(g)) > 2e-7  # every sign is well defined
      x_adv = x_adv + step_size * np.sign(g)
      x_adv = np.clip(np.clip(x_adv, x64 - eps, x64 + eps), 0.0, 1.0)
    return x_adv

  if name == "trades":
    forward, reverse = _kl_logit_grads(x64, w, b)
    want = run(forward)
    if eps > 0.1:  # the inputs tell the two KL directions apart
      assert np.abs(run(reverse) - want).max() > step_size / 2
  else:
    want = run(_ce_logit_grad(y))
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert np.max(np.abs(got - x)) > eps - 1e-6  # the ball's face is reached


def test_l2_pgd_steps(linear_problem):
  """L2 PGD from x (Madry et al.'s robustness library): x + a g / ||g||_2,
  rescaled onto the eps ball when outside, clipped to [0, 1]."""
  x, y, w, b = linear_problem
  eps, step_size, steps = 0.5, 0.2, 4
  got = np.asarray(pgd_attack(
      lambda z: z.reshape(z.shape[0], -1) @ jnp.asarray(w) + jnp.asarray(b),
      jnp.asarray(x), jnp.asarray(y), key=None, eps=eps,
      step_size=step_size, steps=steps, norm="l2", random_start=False))
  x64 = x.astype(np.float64)
  x_adv = x64
  for _ in range(steps):
    g = _np_linear_input_grad(x_adv, w, b, _ce_logit_grad(y))
    x_adv = x_adv + step_size * g / np.sqrt(np.sum(g ** 2, (1, 2, 3),
                                                   keepdims=True))
    delta = x_adv - x64
    n = np.sqrt(np.sum(delta ** 2, (1, 2, 3), keepdims=True))
    x_adv = np.clip(x64 + delta * np.minimum(1.0, eps / n), 0.0, 1.0)
  np.testing.assert_allclose(got, x_adv, atol=2e-6)
  assert np.sqrt(np.sum((got - x) ** 2, (1, 2, 3))).max() > 0.4


# -------------------------------------------------------------------- APGD


def _mlp_params(seed: int, dim: int, hidden: int, classes: int):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, 1.5, (dim, hidden)), rng.normal(0, 0.3, hidden),
          rng.normal(0, 1.5, (hidden, classes)), rng.normal(0, 0.3, classes))


def _np_mlp_ce_and_grad(x, y, params):
  """Per-example CE of ``tanh(x W1 + b1) W2 + b2`` and its input gradient."""
  w1, b1, w2, b2 = params
  flat = x.reshape(len(x), -1)
  h = np.tanh(flat @ w1 + b1)
  z = h @ w2 + b2
  ce = -_log_softmax(z)[np.arange(len(y)), y]
  dz = _softmax(z) - np.eye(z.shape[1])[y]
  dx = ((dz @ w2.T) * (1 - h ** 2)) @ w1.T
  return ce, dx.reshape(x.shape), z


def _l2_unit(v):
  """autopgd_base.py's L2 normalize: ``v / (||v||_2 + 1e-12)`` per example."""
  return v / (np.sqrt(np.sum(v ** 2, (1, 2, 3), keepdims=True)) + 1e-12)


def _np_apgd(x, y, x_start, params, *, eps, n_iter, momentum=0.75,
             rho=0.75, norm="linf"):
  """autopgd_base.py's attack_single_run, Linf or L2, CE, one EOT sample.

  Returns ``(trace, counts)``: per iteration ``(x_adv, step_size,
  loss_best, x_best_adv, acc)`` after its step-size check, and how often
  each branch of the step-size rule was taken (to show that the test's
  trajectory exercises them).
  """
  n_iter_2 = max(int(0.22 * n_iter), 1)
  n_iter_min = max(int(0.06 * n_iter), 1)
  size_decr = max(int(0.03 * n_iter), 1)
  if norm == "linf":
    def proj(z):
      return np.clip(np.minimum(np.maximum(z, x - eps), x + eps), 0.0, 1.0)

    def direction(g):
      return np.sign(g)
  else:
    def proj(z):
      n = np.sqrt(np.sum((z - x) ** 2, (1, 2, 3), keepdims=True))
      return np.clip(x + _l2_unit(z - x) * np.minimum(eps, n), 0.0, 1.0)

    direction = _l2_unit
  x_adv = x_start.copy()
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros((n_iter, len(x)))
  loss_indiv, grad, logits = _np_mlp_ce_and_grad(x_adv, y, params)
  grad_best = grad.copy()
  acc = logits.argmax(1) == y
  loss_best = loss_indiv.copy()
  step_size = 2.0 * eps * np.ones((len(x), 1, 1, 1))
  x_adv_old = x_adv.copy()
  k = n_iter_2
  counter3 = 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones(len(x))
  counts = dict(kept=0, stalled_only=0, at_threshold=0, restarts=0,
                zero_history=0)
  loss_start = loss_indiv.copy()
  trace = []
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = momentum if i > 0 else 1.0
    x_adv_1 = proj(x_adv + step_size * direction(grad))
    x_adv_1 = proj(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a))
    x_adv = x_adv_1
    loss_indiv, grad, logits = _np_mlp_ce_and_grad(x_adv, y, params)
    pred = logits.argmax(1) == y
    acc = np.minimum(acc, pred)
    x_best_adv[~pred] = x_adv[~pred]
    y1 = loss_indiv.copy()
    loss_steps[i] = y1
    ind = y1 > loss_best
    x_best[ind] = x_adv[ind]
    grad_best[ind] = grad[ind]
    loss_best[ind] = y1[ind]
    counter3 += 1
    if counter3 == k:
      # check_oscillation: increases over the last k iterations (index -1
      # wraps to the still-zero last row, the reference's quirk).
      t = np.zeros(len(x))
      for counter5 in range(k):
        t += loss_steps[i - counter5] > loss_steps[i - counter5 - 1]
      fl_oscillation = (t <= k * rho).astype(float)
      if i == n_iter_2 - 1:  # decisions that the zero history changes
        first = loss_steps[0]
        t_start = t - (first > 0) + (first > loss_start)
        counts["zero_history"] += int(np.sum((t <= k * rho)
                                             != (t_start <= k * rho)))
      fl_reduce_no_impr = (1.0 - reduced_last_check) * (
          loss_best_last_check >= loss_best)
      counts["at_threshold"] += int(np.sum(t == k * rho))
      counts["stalled_only"] += int(np.sum(fl_reduce_no_impr
                                           > fl_oscillation))
      fl_oscillation = np.maximum(fl_oscillation, fl_reduce_no_impr)
      reduced_last_check = fl_oscillation.copy()
      loss_best_last_check = loss_best.copy()
      osc = fl_oscillation > 0
      counts["kept"] += int(np.sum(~osc))
      step_size[osc] /= 2.0
      # restarts that move an iterate visibly back to its best point
      counts["restarts"] += int(np.sum(
          np.abs(x_adv[osc] - x_best[osc]).max((1, 2, 3)) > 1e-3))
      x_adv[osc] = x_best[osc]
      grad[osc] = grad_best[osc]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
    trace.append((x_adv.copy(), step_size[:, 0, 0, 0].copy(),
                  loss_best.copy(), x_best_adv.copy(), acc.copy()))
  return trace, counts


def test_apgd_trajectory_matches_the_reference_step_by_step():
  """APGD-CE on a tanh network: every iterate, step size, best loss, best
  adversarial point and robust flag equal autopgd_base.py's, through the
  step-size checkpoints, momentum 0.75, halving and restarts from the best
  point."""
  n_iter, eps, batch = 25, 0.3, 6
  params = _mlp_params(38, 8, 6, 4)
  rng = np.random.default_rng(11)
  x = rng.uniform(0.1, 0.9, (batch, 2, 2, 2)).astype(np.float32)
  x64 = x.astype(np.float64)
  y = np.asarray(_np_mlp_ce_and_grad(x64, np.zeros(batch, int), params)[2]
                 .argmax(1))  # start from correctly classified points
  jparams = [jnp.float32(p) for p in params]

  def logits_fn(z, keys):
    del keys
    h = jnp.tanh(z.reshape(z.shape[0], -1) @ jparams[0] + jparams[1])
    return h @ jparams[2] + jparams[3]

  keys = jax.random.split(jax.random.key(6), batch)
  kwargs = dict(eps=eps, norm="linf", loss="ce")
  state = apgd.init_state(logits_fn, jnp.asarray(x), jnp.asarray(y), keys,
                          **kwargs)
  step = jax.jit(apgd.make_step(logits_fn, jnp.asarray(x), jnp.asarray(y),
                                keys, steps=n_iter, **kwargs))

  # The reference's start: eps * t / ||t||_inf with t uniform in [-1, 1].
  t = np.asarray(jax.vmap(lambda k: jax.random.uniform(
      k, x.shape[1:], jnp.float32, -1.0, 1.0))(keys), np.float64)
  start = np.clip(x64 + eps * t / np.abs(t).reshape(batch, -1).max(1)[
      :, None, None, None], 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(state["x_adv"]), start, atol=1e-6)
  trace, counts = _np_apgd(x64, y, start, params, eps=eps, n_iter=n_iter)
  for i, (x_adv, step_size, loss_best, x_best_adv, acc) in enumerate(trace):
    state = step(state, jnp.int32(i))
    np.testing.assert_allclose(np.asarray(state["x_adv"]), x_adv, atol=2e-5,
                               err_msg=f"iterate {i}")
    np.testing.assert_allclose(np.asarray(state["step_size"]), step_size,
                               rtol=1e-6, err_msg=f"step size {i}")
    np.testing.assert_allclose(np.asarray(state["loss_best"]), loss_best,
                               rtol=1e-4, atol=1e-5, err_msg=f"best loss {i}")
    np.testing.assert_allclose(np.asarray(state["x_best_adv"]), x_best_adv,
                               atol=2e-5, err_msg=f"best adversarial {i}")
    np.testing.assert_array_equal(np.asarray(state["robust"]), acc,
                                  err_msg=f"robust {i}")

  # The trajectory exercises what it pins: checks that keep the step and
  # checks that halve it, by the oscillation count (one exactly at the
  # threshold k * rho) and by the stall rule alone; restarts from a best
  # point away from the iterate; a first window whose decision the
  # reference's zero-filled loss history changes; adversarial points found;
  # and momentum changes the path.
  assert all(v > 0 for v in counts.values()), counts
  assert not trace[-1][4].all()
  plain, _ = _np_apgd(x64, y, start, params, eps=eps, n_iter=n_iter,
                      momentum=1.0)
  assert max(np.abs(a[0] - b[0]).max() for a, b in zip(trace, plain)) > \
      0.2 * eps


def test_apgd_l2_trajectory_matches_the_reference():
  """APGD-CE with the L2 step (g / ||g||, projection onto the L2 ball) and
  its start on the L2 sphere, iterate by iterate."""
  n_iter, eps, batch = 12, 0.8, 4
  params = _mlp_params(38, 8, 6, 4)
  rng = np.random.default_rng(11)
  x = rng.uniform(0.1, 0.9, (batch, 2, 2, 2)).astype(np.float32)
  x64 = x.astype(np.float64)
  y = np.asarray(_np_mlp_ce_and_grad(x64, np.zeros(batch, int), params)[2]
                 .argmax(1))
  jparams = [jnp.float32(p) for p in params]

  def logits_fn(z, keys):
    del keys
    h = jnp.tanh(z.reshape(z.shape[0], -1) @ jparams[0] + jparams[1])
    return h @ jparams[2] + jparams[3]

  keys = jax.random.split(jax.random.key(13), batch)
  kwargs = dict(eps=eps, norm="l2", loss="ce")
  state = apgd.init_state(logits_fn, jnp.asarray(x), jnp.asarray(y), keys,
                          **kwargs)
  step = jax.jit(apgd.make_step(logits_fn, jnp.asarray(x), jnp.asarray(y),
                                keys, steps=n_iter, **kwargs))
  # The reference's L2 start: x + eps * t / ||t||_2, t standard normal.
  t = np.asarray(jax.vmap(lambda k: jax.random.normal(
      k, x.shape[1:], jnp.float32))(keys), np.float64)
  start = np.clip(x64 + eps * _l2_unit(t), 0.0, 1.0)
  trace, _ = _np_apgd(x64, y, start, params, eps=eps, n_iter=n_iter,
                      norm="l2")
  for i, (x_adv, step_size, loss_best, *_) in enumerate(trace):
    state = step(state, jnp.int32(i))
    np.testing.assert_allclose(np.asarray(state["x_adv"]), x_adv, atol=2e-5,
                               err_msg=f"iterate {i}")
    np.testing.assert_allclose(np.asarray(state["step_size"]), step_size,
                               rtol=1e-6, err_msg=f"step size {i}")
    np.testing.assert_allclose(np.asarray(state["loss_best"]), loss_best,
                               rtol=1e-4, atol=1e-5, err_msg=f"best {i}")
  assert np.abs(trace[-1][0] - x64).max() > 0.1


# --------------------------------------------------------------------- FAB


def _np_mlp_logits_and_diff_grad(x, params, y, target):
  """Logits of the tanh network and d (z_t - z_y) / d x, per example."""
  w1, b1, w2, b2 = params
  h = np.tanh(x @ w1 + b1)
  dh = (w2[:, target] - w2[:, y]).T * (1 - h ** 2)
  return h @ w2 + b2, dh @ w1.T


def test_fab_steps_match_the_reference():
  """Six FAB-T iterations on a tanh network against fab_pt.py's targeted
  step: the boundary linearised at the iterate, both the iterate and the
  clean point projected onto it, alpha = |d1| / (|d1| + |d0|) capped at
  0.1, extrapolation by eta 1.05, the smallest adversarial perturbation
  kept, the pull back towards the clean point by beta 0.9."""
  dim, batch, steps = 6, 4, 6
  params = _mlp_params(12, dim, 5, 4)
  rng = np.random.default_rng(7)
  x = rng.uniform(0.4, 0.6, (batch, 1, 2, 3)).astype(np.float32)
  x64 = x.reshape(batch, -1).astype(np.float64)
  rows = np.arange(batch)
  logits = _np_mlp_logits_and_diff_grad(x64, params, np.zeros(batch, int),
                                        np.zeros(batch, int))[0]
  y = logits.argmax(1)
  target = np.argsort(logits, 1)[:, -2]  # the runner-up

  def np_project(t, wv, bv):
    """Smallest-Linf d with wv.(t + d) = bv (the box is not reached)."""
    lam = (bv - np.sum(wv * t, 1)) / np.abs(wv).sum(1)
    d = lam[:, None] * np.sign(wv)
    assert np.all((t + d > 0) & (t + d < 1))
    return d

  x1, adv = x64.copy(), x64.copy()
  best = np.full(batch, 1e10)
  trace, capped = [], 0
  for _ in range(steps):
    z, dg = _np_mlp_logits_and_diff_grad(x1, params, y, target)
    df = z[rows, target] - z[rows, y]
    bb = -df + np.sum(dg * x1, 1)
    d1, d0 = np_project(x1, dg, bb), np_project(x64, dg, bb)
    a1 = np.maximum(np.abs(d1).max(1), 1e-8)
    a0 = np.maximum(np.abs(d0).max(1), 1e-8)
    capped += int(np.sum((a1 / (a1 + a0) > 0.1) & (np.abs(d1 - d0).max(1)
                                                    > 1e-3)))
    alpha = np.minimum(np.maximum(a1 / (a1 + a0), 0.0), 0.1)[:, None]
    x1 = np.clip((x1 + 1.05 * d1) * (1 - alpha) + (x64 + 1.05 * d0) * alpha,
                 0.0, 1.0)
    is_adv = _np_mlp_logits_and_diff_grad(x1, params, y, target)[0].argmax(
        1) != y
    dist = np.abs(x1 - x64).max(1)
    better = is_adv & (dist < best)
    adv[better], best[better] = x1[better], dist[better]
    x1[is_adv] = x64[is_adv] + (x1[is_adv] - x64[is_adv]) * 0.9
    trace.append((x1.copy(), adv.copy(), best.copy()))
  # The steps exercise the cap on alpha (where the two projections differ)
  # and find adversarial points.
  assert capped > 0 and np.all(best < 1e10)

  jp = [jnp.float32(p) for p in params]

  def fn(z, keys):
    del keys
    h = jnp.tanh(z.reshape(z.shape[0], -1) @ jp[0] + jp[1])
    return h @ jp[2] + jp[3]

  keys = jax.random.split(jax.random.key(0), batch)
  step = jax.jit(fab.make_step(fn, jnp.asarray(x), jnp.asarray(y),
                               jnp.asarray(target), keys, norm="linf"))
  state = fab.init_state(jnp.asarray(x))
  for i, (want_x1, want_adv, want_best) in enumerate(trace):
    state = step(state, jnp.int32(i))
    np.testing.assert_allclose(np.asarray(state["x1"]).reshape(batch, -1),
                               want_x1, atol=2e-5, err_msg=f"iterate {i}")
    np.testing.assert_allclose(np.asarray(state["adv"]).reshape(batch, -1),
                               want_adv, atol=2e-5, err_msg=f"adv {i}")
    np.testing.assert_allclose(np.asarray(state["best"]), want_best,
                               rtol=1e-4, err_msg=f"best {i}")


# ------------------------------------------------------------------ Square


def test_square_side_schedule_matches_p_selection():
  """Linf sides: round(sqrt(p * H * W)) with p from the reference's
  p_selection (p_init halved after 10, 50, 200, ... 8000 iterations)."""
  def p_selection(it_, p_init):
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64),
                       (1000, 32), (500, 16), (200, 8), (50, 4), (10, 2)):
      if it_ > bound:
        return p_init / div
    return p_init

  sides = square.square_sides(0.8, 32, 32, "linf")
  for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001,
            4000, 4001, 6000, 6001, 8000, 8001, 9999):
    want = max(int(round(np.sqrt(p_selection(i, 0.8) * 32 * 32))), 1)
    assert int(sides[int(square.p_level(jnp.int32(i), 10000, False))]) \
        == want, i
  # rescale_schedule maps iteration i of n queries to i * 10000 / n.
  assert int(square.p_level(jnp.int32(30), 100, True)) == 6  # 3000: / 2^6


def test_square_linf_step_matches_the_reference_update():
  """One Linf Square query: a +-2 eps square (one sign per channel) on the
  best point, projected to the ball and [0, 1]; the candidate is kept iff
  its margin loss is lower or it misclassifies; fooled points stop."""
  rng = np.random.default_rng(8)
  batch, h, wd, c = 6, 6, 6, 2
  x = rng.uniform(0.2, 0.8, (batch, h, wd, c)).astype(np.float32)
  w = rng.normal(0, 1, (h * wd * c, 3)).astype(np.float32)
  eps = 0.1
  x64 = x.astype(np.float64)
  y = (x64.reshape(batch, -1) @ w).argmax(1)
  y[0] = (y[0] + 1) % 3   # already misclassified: must not query
  jw = jnp.asarray(w)
  queries = []

  def fn(z, keys):
    del keys
    jax.debug.callback(lambda v: queries.append(np.asarray(v, np.float64)), z)
    return z.reshape(z.shape[0], -1) @ jw

  def np_margin(z):
    logits = z.reshape(batch, -1) @ w
    other = np.where(np.eye(3, dtype=bool)[y], -np.inf, logits).max(1)
    return logits[np.arange(batch), y] - other

  keys = jax.random.split(jax.random.key(9), batch)
  state = square.init_state(fn, jnp.asarray(x), jnp.asarray(y), keys,
                            eps=eps, norm="linf")
  step = jax.jit(square.make_step(fn, jnp.asarray(x), jnp.asarray(y), keys,
                                  eps=eps, norm="linf", n_queries=100))
  side = int(square.square_sides(0.8, h, wd, "linf")[0])
  assert side == max(int(round(np.sqrt(0.8 * h * wd))), 1)
  for i in range(4):
    before = jax.tree.map(lambda v: np.asarray(v, np.float64), state)
    state = step(state, jnp.int32(i))
    cand = queries[-1]
    change = np.abs(cand - before["x_best"]) > 1e-7
    for e in range(batch):
      rows, cols = np.nonzero(change[e].any(-1))
      if rows.size:  # the change lies in one side x side square
        assert rows.max() - rows.min() < side and cols.max() - cols.min() \
            < side
      # every changed value is the ball's face, the box or the sign flip
      moved = cand[e][change[e]] - x64[e][change[e]]
      assert np.all((np.abs(np.abs(moved) - eps) < 1e-6)
                    | (cand[e][change[e]] <= 1e-7)
                    | (cand[e][change[e]] >= 1 - 1e-7))
    margin = np_margin(cand)
    loss = margin
    active = before["margin"] > 0
    improved = (loss < before["loss"]) & active
    take = (improved | (margin <= 0)) & active
    np.testing.assert_allclose(
        np.asarray(state["x_best"]),
        np.where(take[:, None, None, None], cand, before["x_best"]),
        atol=1e-6)
    np.testing.assert_allclose(np.asarray(state["margin"]),
                               np.where(take, margin, before["margin"]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state["loss"]),
                               np.where(improved, loss, before["loss"]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(state["queries"]),
                                  before["queries"] + active)
  assert int(state["queries"][0]) == 1   # the fooled point never queried


# ------------------------------------------------------------- corruptions


def test_frost_blends_with_the_reference_weights():
  """frost(x) = clip(a x + b T) with make_cifar_c.py's (a, b) per severity;
  T is robustjax's procedural texture (the reference's photographs are not
  shipped), so only the blend and its constants are pinned here."""
  from robustjax.data.corruptions import weather
  weights = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)]
  key = jax.random.key(12)
  x = np.random.default_rng(12).uniform(0, 1, (8, 8, 3)).astype(np.float32)
  texture = np.asarray(weather.frost_texture(key, 8, 8), np.float64)
  for severity, (a, b) in enumerate(weights, start=1):
    got = np.asarray(weather.frost(key, jnp.asarray(x), severity))
    np.testing.assert_allclose(got, np.clip(a * x + b * texture, 0, 1),
                               atol=1e-6, err_msg=f"severity {severity}")
