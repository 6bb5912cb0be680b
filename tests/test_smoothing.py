"""Adaptive smoothing (robustjax/smoothing): the log-mixture, the margin
certificate, the mixing network and its weight map, gradients through every
part, AutoAttack on a mixture, and the training recipe's pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import attacks, models, sharding
from robustjax.errors import ConfigError
from robustjax.smoothing import (AdaptiveClassifier, GammaConstants,
                                 MixedClassifier, MixingNet, certificate,
                                 mix_log_probs, mixture_variables, training)
from robustjax.smoothing.mixing_net import MixingHead
import tiny_models

ZS = jnp.array([[2.0, 0.0, -1.0]])
ZR = jnp.array([[0.5, 1.0, 0.0]])


def test_known_answers_of_the_mixture():
  # Computed in float64 from the definition.
  out = mix_log_probs(ZS, ZR, 0.8, std_scale=2.0, rob_scale=1.0)
  np.testing.assert_allclose(out[0], [-0.817164, -0.894596, -1.900160],
                             atol=2e-6)
  out = mix_log_probs(ZS, ZR, 0.96, std_scale=1.2, rob_scale=0.3)
  np.testing.assert_allclose(out[0], [-1.040182, -0.988163, -1.293351],
                             atol=2e-6)
  assert int(jnp.argmax(out)) == 1  # the robust expert overrules


def test_rows_sum_to_one_and_endpoints_are_the_base_models():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  zs = 30.0 * jax.random.normal(k1, (64, 10))  # large: no underflow to -inf
  zr = 30.0 * jax.random.normal(k2, (64, 10))
  alpha = jax.random.uniform(k3, (64,))
  out = mix_log_probs(zs, zr, alpha, std_scale=1.5, rob_scale=0.5)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(jnp.exp(out).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(mix_log_probs(zs, zr, 0.0, std_scale=1.5),
                             jax.nn.log_softmax(1.5 * zs), atol=1e-5)
  np.testing.assert_allclose(mix_log_probs(zs, zr, 1.0, rob_scale=0.5),
                             jax.nn.log_softmax(0.5 * zr), atol=1e-5)
  # Gradients stay finite at the endpoints.
  for a in (0.0, 1.0):
    g = jax.grad(lambda a_, s, r: mix_log_probs(s, r, a_).sum(),
                 argnums=(0, 1, 2))(a, zs, zr)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


# small_cnn's BatchNorm outputs bn2 (32x32) and bn4 (16x16) feed the mixer:
# the same code path as a ResNet's stage1/stage2, at a fraction of the
# compile time.
LAYERS = ("bn2", "bn4")


def _tiny(seed, width=0.25):
  model = models.create_model("small_cnn", width=width)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  return model, dict(variables)


@pytest.fixture(scope="module")
def pair():
  (ms, vs), (mr, vr) = _tiny(0), _tiny(1)
  return ms, vs, mr, vr


def test_fixed_mixture_at_the_endpoints_predicts_as_the_base_models(pair):
  ms, vs, mr, vr = pair
  x = jax.random.uniform(jax.random.key(2), (8, 32, 32, 3))
  mixed = MixedClassifier(ms, mr)
  for a, model, v in ((0.0, ms, vs), (1.0, mr, vr)):
    out = mixed.apply(mixture_variables(vs, vr, a), x)
    np.testing.assert_allclose(
        out, jax.nn.log_softmax(model.apply(v, x, train=False)), atol=1e-5)
  with pytest.raises(ConfigError, match=r"a=1.5 is outside \[0, 1\]"):
    mixture_variables(vs, vr, 1.5)


def test_certificate_on_constructed_logits():
  # alpha 0.8 needs a robust margin above 0.25.
  p = jnp.array([[0.60, 0.34, 0.06], [0.55, 0.40, 0.05], [0.2, 0.7, 0.1]])
  y = jnp.array([0, 0, 1])
  margins = certificate.robust_margin(jnp.log(p), y)
  np.testing.assert_allclose(margins, [0.26, 0.15, 0.5], atol=1e-6)
  np.testing.assert_allclose(certificate.required_margin(0.8), 0.25)
  assert certificate.certified(jnp.log(p), y, 0.8).tolist() == [
      True, False, True]
  # a <= 1/2: no margin suffices.
  assert not certificate.certified(jnp.log(p), y, 0.5).any()
  assert float(certificate.required_margin(0.5)) == np.inf
  # The property: certified points keep their label whatever the standard
  # model says, even with all its mass on the robust model's runner-up.
  key = jax.random.key(3)
  for a in (0.6, 0.8, 0.95):
    zr = 4.0 * jax.random.normal(jax.random.fold_in(key, int(100 * a)),
                                 (2000, 10))
    yy = jnp.argmax(zr, -1)
    ok = certificate.certified(zr, yy, a)
    runner_up = jnp.argsort(-zr, -1)[:, 1]
    zs = 1e4 * jax.nn.one_hot(runner_up, 10)  # adversarial standard model
    pred = jnp.argmax(mix_log_probs(zs, zr, a), -1)
    assert int(ok.sum()) > 50
    assert bool(jnp.all(pred[ok] == yy[ok]))
    # And the bound is tight: below it, that standard model flips points.
    assert bool(jnp.any(pred[~ok] != yy[~ok]))


def test_mixing_net_has_the_reference_parameter_count():
  net = MixingNet(1.0)
  shapes = jax.eval_shape(lambda: net.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 768)),
      jnp.zeros((1, 16, 16, 1536))))
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(
      shapes["params"])) == 67_848_704


def test_gamma_map_known_answer_and_eval_range():
  head = MixingHead(1 / 64)
  f1, f2 = jnp.zeros((4, 8, 8, 16)), jnp.zeros((4, 4, 4, 32))
  v = head.init(jax.random.key(0), f1, f2, False, GammaConstants())
  # raw is 0 for zero features; running mean -0.5 and variance 0.25 make
  # the normalised score 0.99998.
  v = jax.tree_util.tree_map(lambda x: x, dict(v))
  v["batch_stats"]["gamma_bn"] = {"mean": jnp.array([-0.5]),
                                  "var": jnp.array([0.25])}
  consts = GammaConstants(2.0, 1.3, 0.15, 0.84, squeeze=True)
  gamma, alpha = head.apply(v, f1, f2, False, consts)
  np.testing.assert_allclose(gamma, 3.29996, atol=1e-5)
  np.testing.assert_allclose(alpha, 0.984664, atol=1e-6)
  # Eval mode keeps a in [alpha_bias, alpha_bias + alpha_scale] for any
  # features, however extreme.
  big = jax.random.normal(jax.random.key(1), (16, 8, 8, 16)) * 1e3
  big2 = jax.random.normal(jax.random.key(2), (16, 4, 4, 32)) * 1e3
  apply = jax.jit(lambda v: head.apply(v, big, big2, False, consts)[1])
  for sign in (1.0, -1.0):
    v["params"]["net"]["dense"]["kernel"] = sign * 1e3 * jnp.abs(
        v["params"]["net"]["dense"]["kernel"])
    alpha = apply(v)
    assert bool(jnp.all((alpha >= 0.84) & (alpha <= 0.99 + 1e-6)))


def test_train_mode_gamma_is_standardised():
  head = MixingHead(1 / 64)
  k1, k2 = jax.random.split(jax.random.key(4))
  f1 = jax.random.normal(k1, (256, 8, 8, 16))
  f2 = jax.random.normal(k2, (256, 4, 4, 32))
  v = head.init(jax.random.key(0), f1, f2, False, GammaConstants())
  (gamma, _), state = head.apply(v, f1, f2, True, GammaConstants(2.0, 0.4),
                                 mutable=["batch_stats"])
  # Batch-normalised after the clamp: mean gamma_bias, std about
  # gamma_scale.
  np.testing.assert_allclose(float(gamma.mean()), 0.4, atol=1e-4)
  assert 1.9 < float(gamma.std()) <= 2.0
  assert not np.allclose(state["batch_stats"]["gamma_bn"]["mean"], 0.0)


@pytest.fixture(scope="module")
def adaptive(pair):
  ms, vs, mr, vr = pair
  clf = AdaptiveClassifier(ms, mr, LAYERS, LAYERS, width=1 / 64)
  mixer = clf.init_mixer(jax.random.key(5), vs, vr, (32, 32, 3))
  return clf, {"std": vs, "rob": vr, "mixer": mixer}


def test_gradients_reach_both_models_and_the_mixing_network(adaptive):
  clf, variables = adaptive
  x = jax.random.uniform(jax.random.key(6), (8, 32, 32, 3))
  y = jnp.arange(8) % 10
  for phase in ("train", "eval"):
    def loss(v):
      out = clf.forward(v, x, phase)
      return -jnp.take_along_axis(out.log_probs, y[:, None], -1).mean()
    grads = jax.jit(jax.grad(loss))(variables)
    for part in ("std", "rob", "mixer"):
      norm = optax_norm(grads[part]["params"])
      assert np.isfinite(norm) and norm > 0, (phase, part)
  # The input gradient passes through a(x): detaching the features changes
  # it.
  def ce(z, detach):
    out = clf.forward(variables, z, "eval")
    a = jax.lax.stop_gradient(out.alpha) if detach else out.alpha
    lp = mix_log_probs(out.std_logits, out.rob_logits, a)
    return -jnp.take_along_axis(lp, y[:, None], -1).sum()
  g_full = jax.jit(jax.grad(ce), static_argnums=1)(x, False)
  g_detached = jax.jit(jax.grad(ce), static_argnums=1)(x, True)
  assert float(jnp.abs(g_full - g_detached).max()) > 0


def optax_norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(tree))))


def test_adaptive_eval_alpha_in_range_and_mixture_normalised(adaptive):
  clf, variables = adaptive
  x = jax.random.uniform(jax.random.key(7), (16, 32, 32, 3))
  out = clf.forward(variables, x, "eval")
  lo, hi = clf.eval_constants.alpha_range
  assert bool(jnp.all((out.alpha >= lo) & (out.alpha <= hi + 1e-6)))
  np.testing.assert_allclose(jnp.exp(out.log_probs).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(clf.apply(variables, x), out.log_probs)


def test_mixer_loss_known_answers():
  lp = jnp.log(jnp.array([[np.exp(-0.5), 1 - np.exp(-0.5)]]))
  args = (lp, jnp.array([1.0]), jnp.array([0]), jnp.array([1.0]),
          jnp.array([1.0]))
  value, terms = training.mixer_loss(*args, training.LossWeights(1.5, 0, .2))
  np.testing.assert_allclose(terms["bce"], 0.313262, atol=1e-6)
  np.testing.assert_allclose(terms["ce"], 0.5, atol=1e-6)
  np.testing.assert_allclose(value, 0.501219, atol=1e-6)
  value, _ = training.mixer_loss(*args, training.LossWeights(1, .5, .1))
  np.testing.assert_allclose(value, 0.578925, atol=1e-6)


def test_warmup_cosine_schedule():
  sched = training.warmup_cosine(1e-4, 100)  # tau = 4
  np.testing.assert_allclose(sched(0), 1e-4 * (1 - np.exp(-0.25)), rtol=1e-6)
  np.testing.assert_allclose(
      sched(50), 1e-4 * 0.5 * (1 - np.exp(-51 / 4)), rtol=1e-5)
  assert float(sched(100)) == 0.0


def test_adaptive_training_attack_and_step(adaptive, pair):
  clf, variables = adaptive
  recipe = training.AttackRecipe(steps_df=3.0, max_steps=6, n_targets=2)
  attack = training.AdaptiveAttack(clf, recipe)
  x, y = tiny_models.test_points(8)
  x, y = jnp.asarray(x), jnp.asarray(y)
  x_adv = attack(variables, x, y, jax.random.key(8),
                 np.random.default_rng(0))
  assert x_adv.shape == (24, 32, 32, 3)
  dist = jnp.abs(x_adv - jnp.tile(x, (3, 1, 1, 1))).max((1, 2, 3))
  assert bool(jnp.all(dist <= 1.1 * 8 / 255 + 1e-6))
  assert bool(jnp.all((x_adv >= 0) & (x_adv <= 1)))
  from robustjax import data
  train = data.load_split("cifar10", "train")
  result = training.train_mixer(
      clf, {"std": variables["std"], "rob": variables["rob"]},
      variables["mixer"], train, batch_size=8, num_batches=2, recipe=recipe,
      loss=training.LossWeights(), lr=1e-3, accum=2, seed=0)
  assert len(result.history) == 2
  assert all(np.isfinite(r["loss"]) for r in result.history)
  before = jax.tree.leaves(variables["mixer"]["params"])
  after = jax.tree.leaves(result.mixer["params"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_autoattack_on_two_copies_equals_autoattack_on_the_model():
  """A cheap cascade (APGD-CE and APGD-T, 5 steps, 2 targets) on 32 points
  of a briefly trained tiny CNN, at eps 1/255 so that some survive."""
  model, variables = tiny_models.trained_tiny_cnn(steps=150)
  x, y = tiny_models.test_points(32)
  config = attacks.config_for("custom", attacks=("apgd-ce", "apgd-t"),
                              apgd_steps=5, n_target_classes=2,
                              eps=1 / 255)  # undefended: a small ball
  mesh = sharding.make_mesh(1)
  base = attacks.run_autoattack(
      lambda v, z, k: model.apply(v, z), variables, x, y, config, mesh=mesh,
      batch_size=32, chunk_size=5)
  assert 0 < base.robust_acc < base.clean_acc
  mixed = MixedClassifier(model, model)
  for a in (0.3,):
    result = attacks.run_autoattack(
        lambda v, z, k: mixed.apply(v, z), mixture_variables(
            variables, variables, a), x, y, config, mesh=mesh, batch_size=32,
        chunk_size=5)
    assert result.clean_acc == base.clean_acc
    assert result.robust_acc == base.robust_acc
    np.testing.assert_array_equal(result.robust, base.robust)


def test_mixtures_evaluate_like_models(pair, adaptive):
  """``evaluation.evaluate`` and the weight-space curves' evaluator take a
  mixture as they take a model; at a = 1 it scores as the robust model."""
  from robustjax import data, evaluation
  from robustjax.weightspace import curves
  ms, vs, mr, vr = pair
  test = data.load_split("cifar10", "test")
  mesh = sharding.make_mesh(1)
  clean = attacks.build({"name": "none"})
  kwargs = dict(attack=clean, batch_size=32, num_examples=64)
  mixed = evaluation.evaluate(MixedClassifier(ms, mr),
                              mixture_variables(vs, vr, 1.0), test, mesh,
                              **kwargs)
  assert mixed["clean_acc"] == evaluation.evaluate(mr, vr, test, mesh,
                                                   **kwargs)["clean_acc"]
  point = curves.make_evaluator(MixedClassifier(ms, mr), test, mesh,
                                **kwargs)(mixture_variables(vs, vr, 0.5))
  assert point["num_examples"] == 64 and np.isfinite(point["clean_loss"])
  clf, variables = adaptive
  assert 0.0 <= evaluation.evaluate(clf, variables, test, mesh,
                                    **kwargs)["clean_acc"] <= 1.0
