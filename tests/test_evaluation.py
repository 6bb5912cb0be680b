"""Evaluation: the numbers do not depend on how points are batched or on the
number of devices, and padding rows never count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import attacks, data, evaluation, sharding
from robustjax.errors import ConfigError


class PixelVote(nn.Module):
  """Logit c = 100 * (pixel value at flat position 3c): a model whose
  prediction under a random start depends strongly on the noise drawn, so
  the test below sees any change in which noise an example receives."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(10, name="dense")(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
  split = data.load_split("cifar10", "test")
  kernel = np.zeros((32 * 32 * 3, 10), np.float32)
  kernel[np.arange(10) * 3, np.arange(10)] = 100.0
  variables = {"params": {"dense": {"kernel": kernel,
                                    "bias": np.zeros(10, np.float32)}}}
  # Random start only (step 0): robust accuracy is decided by the noise.
  attack = dict(name="pgd", eps=16 / 255, step_size=0.0, steps=1,
                restarts=1, norm="linf", loss="ce", start="uniform")
  return split, PixelVote(), variables, attack


def _evaluate(setup, devices, batch_size, seed=3, **overrides):
  split, model, variables, attack = setup
  return evaluation.evaluate(
      model, variables, split, sharding.make_mesh(devices),
      attack=attacks.build(overrides if "name" in overrides
                           else dict(attack, **overrides)),
      batch_size=batch_size, num_examples=200, seed=seed)


def test_accuracy_is_invariant_to_batch_size_and_devices(setup):
  results = [_evaluate(setup, devices, batch_size)
             for devices, batch_size in ((1, 40), (1, 16), (8, 16), (8, 64))]
  assert all(r["num_examples"] == 200 for r in results)
  for r in results[1:]:
    assert r["clean_acc"] == results[0]["clean_acc"]
    assert r["adv_acc"] == results[0]["adv_acc"]
  # The check is not vacuous: the attack changes the outcome, and other
  # noise (another seed) changes it differently.
  assert results[0]["adv_acc"] < results[0]["clean_acc"]
  other = {_evaluate(setup, 1, 40, seed=s)["adv_acc"] for s in (4, 5, 6)}
  assert other - {results[0]["adv_acc"]}


def test_clean_accuracy_matches_a_direct_computation(setup):
  split, model, variables, _ = setup
  result = _evaluate(setup, 1, 32, steps=0)
  logits = model.apply(variables, split.images[:200] / 255.0)
  expected = np.mean(np.argmax(logits, -1) == split.labels[:200])
  assert result["clean_acc"] == pytest.approx(expected)
  assert result["adv_acc"] == result["clean_acc"]
  assert result["attack"] == "none"


# An attack registered here, in a test module, with no change to the
# library: it flips every pixel to the far side of the eps ball from 0.5.
@attacks.register("test-push-out", defaults=dict(eps=8 / 255, scale=1.0),
                  label=lambda p: f"push{p['scale']:g}")
def _push_out(logits_fn, x, y, key, *, eps, scale):
  del logits_fn, y, key
  return jnp.clip(x + scale * eps * jnp.sign(x - 0.5), 0.0, 1.0)


def test_a_registered_attack_runs_in_evaluation(setup):
  split, model, variables, _ = setup
  result = _evaluate(setup, 8, 16, name="test-push-out", eps=64 / 255,
                     scale=1.0)
  assert result["attack"] == "push1"
  # The same points attacked by hand give the same robust accuracy.
  x = split.images[:200] / np.float32(255.0)
  x_adv = np.clip(x + 64 / 255 * np.sign(x - 0.5), 0, 1)
  ok = np.argmax(model.apply(variables, x), -1) == split.labels[:200]
  adv_ok = np.argmax(model.apply(variables, x_adv), -1) == split.labels[:200]
  assert result["adv_acc"] == pytest.approx(np.mean(ok & adv_ok))
  assert result["adv_acc"] < result["clean_acc"]


def test_attack_vocabulary_errors_name_the_fix():
  with pytest.raises(ConfigError, match="unknown attack 'pgdd'.*apgd-ce"):
    attacks.build({"name": "pgdd"})
  with pytest.raises(ConfigError, match="no parameter restart;.*restarts"):
    attacks.build({"name": "pgd", "restart": 2})
  with pytest.raises(ConfigError, match="outside"):
    attacks.build({"name": "apgd-ce", "eps": 8})
  assert attacks.build({"name": "pgd", "steps": 0}).label == "none"
  assert attacks.build({"name": "apgd-ce", "steps": 5}).label == "apgd-ce5"
  assert attacks.build({"name": "pgd", "steps": 7, "restarts": 2}).label == (
      "pgd7x2")


def test_apgd_ce_in_evaluation_equals_apgd_called_directly(setup):
  split, model, variables, _ = setup
  result = _evaluate(setup, 1, 40, name="apgd-ce", eps=8 / 255, steps=5)
  assert result["attack"] == "apgd-ce5"
  x = split.images[:200] / np.float32(255.0)
  y = split.labels[:200]
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(3),
                                                 jnp.arange(200))
  # In the evaluation's batches of 40 (the sum over a batch sets the
  # gradient's rounding).
  x_adv = np.concatenate([attacks.apgd.apgd(
      lambda z: model.apply(variables, z), x[i:i + 40], y[i:i + 40],
      key=keys[i:i + 40], eps=8 / 255, steps=5)[0] for i in range(0, 200, 40)])
  ok = np.argmax(model.apply(variables, x), -1) == y
  adv_ok = np.argmax(model.apply(variables, x_adv), -1) == y
  # PixelVote's logits tie wherever two voting pixels clip to 1: one
  # compiled program may round such a point differently from another, so
  # one point of the 200 may differ.
  assert abs(result["adv_acc"] - np.mean(ok & adv_ok)) <= 1 / 200
  assert result["adv_acc"] < result["clean_acc"] / 2
