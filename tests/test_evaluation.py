"""Evaluation: the numbers do not depend on how points are batched or on the
number of devices, and padding rows never count."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from robustjax import data, evaluation, sharding


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
  attack = ml_collections.ConfigDict(dict(
      eps=16 / 255, step_size=0.0, steps=1, restarts=1, norm="linf",
      loss="ce", random_start=True))
  return split, PixelVote(), variables, attack


def _evaluate(setup, devices, batch_size, seed=3, **overrides):
  split, model, variables, attack = setup
  return evaluation.evaluate(
      model, variables, split, sharding.make_mesh(devices),
      attack_cfg=ml_collections.ConfigDict(dict(attack, **overrides)),
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
