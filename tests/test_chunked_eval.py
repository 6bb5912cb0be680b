"""Evaluation's compiled chunks: an attack run as init / chunks of a few
unrolled steps / output gives the per-point results of the attack run as
one program, so restructuring the loop changes no accuracy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import attacks, data, evaluation, sharding
from robustjax.attacks import iterative as it


class TinyCNN(nn.Module):
  """Two convolutions and a head: gradients depend on the input, so every
  step of an attack moves the iterate differently."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
  split = data.load_split("cifar10", "test")
  model = TinyCNN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  x = jnp.asarray(split.images[:32] / np.float32(255.0))
  # The untrained model's own predictions as labels: every point starts
  # correct, so an attack's success shows in the flags.
  y = jnp.argmax(model.apply(variables, x), -1)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(7),
                                                 jnp.arange(32))
  return split, model, variables, x, y, keys


# Each chunked form against its attack: Linf and L2 PGD, the TRADES inner
# maximisation (KL from a normal start), CW from x itself, APGD-CE and
# APGD-DLR. Step counts that do not divide the chunk plan evenly on purpose
# would fall back to one program, so they divide it.
SPECS = [
    dict(name="pgd", steps=12),
    dict(name="pgd", steps=12, norm="l2", eps=0.5, step_size=0.1),
    dict(name="pgd", steps=12, loss="kl", start="normal"),
    dict(name="pgd", steps=12, loss="cw", start="zero"),
    dict(name="apgd-ce", steps=12),
    dict(name="apgd-dlr", steps=12),
]


def _run_chunked(chunked, logits_fn, x, y, keys, count):
  init = jax.jit(lambda x, y, k: chunked.init(logits_fn, x, y, k))
  chunk = jax.jit(lambda s, x, y, k, start: it.run_steps(
      chunked.make_step(logits_fn, x, y, k), s, start, count))
  state = init(x, y, keys)
  for start, _ in it.chunk_plan(chunked.steps, count):
    state = chunk(state, x, y, keys, np.int32(start))
  return chunked.output(state, x)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(
    str(v) for v in s.values()))
def test_chunks_reproduce_the_one_program_attack(setup, spec):
  _, model, variables, x, y, keys = setup
  attack = attacks.build(spec)
  logits_fn = lambda z: model.apply(variables, z)  # noqa: E731
  whole = jax.jit(lambda x, y, k: attack(logits_fn, x, y, k))(x, y, keys)
  chunked = _run_chunked(attack.chunked(), logits_fn, x, y, keys, 4)
  flags = lambda z: np.asarray(jnp.argmax(logits_fn(z), -1) == y)  # noqa: E731
  np.testing.assert_array_equal(flags(chunked), flags(whole))
  # Every iterate is in the ball; the two forms round the gradient's sum
  # in different programs, so a sign may flip on a near-zero component,
  # but the iterates stay close (a wrong key or a missing step moves them
  # by the step size or more).
  diff = np.abs(np.asarray(chunked) - np.asarray(whole))
  assert np.mean(diff > 1e-6) < 0.01, spec
  # The attack is not vacuous: it moved the points and broke some.
  assert np.max(np.abs(np.asarray(whole) - np.asarray(x))) > 0
  assert flags(whole).mean() < flags(x).mean() == 1.0


def test_evaluation_in_chunks_equals_one_program(setup):
  split, model, variables, *_ = setup
  mesh = sharding.make_mesh(2)
  for spec in (dict(name="pgd", steps=12), dict(name="apgd-ce", steps=12)):
    attack = attacks.build(spec)
    chunked_step = evaluation.make_eval_step(model, attack, mesh,
                                             chunk_size=4)
    one_program = evaluation.make_eval_step(model, attack, mesh,
                                            chunk_size=0)
    assert isinstance(chunked_step, evaluation._ChunkedEvalStep)
    assert len(chunked_step.plan) == 3
    assert not isinstance(one_program, evaluation._ChunkedEvalStep)
    results = [evaluation.evaluate(model, variables, split, mesh,
                                   attack=attack, batch_size=32,
                                   num_examples=96, seed=5, eval_step=s,
                                   with_losses=True)
               for s in (chunked_step, one_program)]
    assert results[0]["clean_acc"] == results[1]["clean_acc"]
    assert results[0]["adv_acc"] == results[1]["adv_acc"]
    assert results[0]["adv_loss"] == pytest.approx(results[1]["adv_loss"],
                                                   rel=1e-4)
    assert results[0]["adv_acc"] < results[0]["clean_acc"]


def test_what_runs_as_one_program():
  # Restarts keep the best run (they need every run); FGSM is one step;
  # an attack no longer than a chunk gains nothing from chunking.
  assert attacks.build(dict(name="pgd", steps=20, restarts=2)).chunked() is None
  assert attacks.build(dict(name="apgd-ce", restarts=2)).chunked() is None
  assert attacks.build(dict(name="fgsm")).chunked() is None
  mesh = sharding.make_mesh(1)
  short = evaluation.make_eval_step(TinyCNN(), attacks.build(
      dict(name="pgd", steps=10)), mesh, chunk_size=10)
  assert not isinstance(short, evaluation._ChunkedEvalStep)
  long = evaluation.make_eval_step(TinyCNN(), attacks.build(
      dict(name="pgd", steps=20)), mesh)
  assert [c for _, c in long.plan] == [5, 5, 5, 5]


def test_negative_chunk_size_is_refused_before_anything_is_written(tmp_path):
  from configs import evaluate as evaluate_config
  from robustjax import tasks
  from robustjax.errors import ConfigError
  config = evaluate_config.get_config("steps=20")
  config.checkpoint_path = str(tmp_path / "no_such_run")
  config.eval.chunk_size = -2
  with pytest.raises(ConfigError, match=r"eval.chunk_size=-2; use 0"):
    tasks.run(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
