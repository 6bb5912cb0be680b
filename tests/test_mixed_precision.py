"""Mixed precision (``model.dtype=bfloat16``): bfloat16 compute, float32
parameters, optimizer state, logits and loss; attacks crafted in bfloat16
agree with float32 ones on the same inputs; the training loop runs with it.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny_models import objective_params

from configs import at as at_config
from robustjax import attacks, checkpoint, data, models, sharding
from robustjax.errors import ConfigError
from robustjax.training import objectives, optimizer, step as step_lib
from robustjax.training.loop import train_and_evaluate

import tiny_models


def _leaf_dtypes(tree) -> set:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_bfloat16_model_has_float32_params_and_logits(name):
  x = jnp.asarray(data.load_split("cifar10", "test").images[:16],
                  jnp.float32) / 255
  f32 = models.create_model(name, width=0.125)
  bf16 = models.create_model(name, width=0.125, dtype="bfloat16")
  variables = f32.init(jax.random.key(0), x, train=False)
  # The compute dtype does not change the parameters: same tree, same values.
  bf16_vars = bf16.init(jax.random.key(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, variables, bf16_vars)
  assert _leaf_dtypes(bf16_vars) == {"float32"}

  logits32 = f32.apply(variables, x, train=False)
  logits16 = bf16.apply(variables, x, train=False)
  assert logits16.dtype == jnp.float32
  assert _rel_err(logits16, logits32) < 0.05
  # It really computes in bfloat16: the convolutions in the HLO take bf16.
  hlo = jax.jit(functools.partial(bf16.apply, train=False)).lower(
      variables, x).as_text()
  assert any("convolution" in line and "bf16" in line
             for line in hlo.splitlines())


def _train_parts(dtype: str, objective: str = "pgd_at"):
  model = models.create_model("small_cnn", width=0.25, dtype=dtype)
  obj_cfg = objective_params(objective, eps=8 / 255, step_size=2 / 255,
                             steps=3, beta=6.0, random_start=True)
  opt_cfg = ml_collections.ConfigDict(dict(
      lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="constant"))
  tx, schedule = optimizer.make_optimizer(opt_cfg, 100)
  mesh = sharding.make_mesh(1)
  step = step_lib.make_train_step(objectives.make_objective(obj_cfg, model),
                                  tx, schedule, mesh, augment=False)
  return model, tx, step


@pytest.mark.parametrize("objective", ["pgd_at", "trades"])
def test_bfloat16_train_step_matches_float32(objective):
  split = data.load_split("cifar10", "test")
  batch = {"image": split.images[:64], "label": split.labels[:64]}
  key = jax.random.key(3)
  model32, tx, step32 = _train_parts("float32", objective)
  _, _, step16 = _train_parts("bfloat16", objective)
  state = step_lib.init_state(model32, tx, jax.random.key(0), (32, 32, 3))
  # The steps donate their input state: give each its own copy.
  s32, m32 = step32(jax.tree.map(jnp.copy, state), batch, key)
  s16, m16 = step16(jax.tree.map(jnp.copy, state), batch, key)

  assert _leaf_dtypes(s16.params) == {"float32"}
  assert _leaf_dtypes(s16.opt_state) <= {"float32", "int32"}
  assert _leaf_dtypes(s16.batch_stats) == {"float32"}
  assert m16["loss"].dtype == jnp.float32
  assert abs(float(m16["loss"]) - float(m32["loss"])) < 0.02 * float(
      m32["loss"])
  # bfloat16 moves the update no further from the float32 one than another
  # draw of the attack's random start does (measured: PGD-AT 0.991 vs 0.981,
  # TRADES 0.974 vs 0.974); a wrong loss or gradient would be far below.
  s32_other, _ = step32(jax.tree.map(jnp.copy, state), batch,
                        jax.random.key(4))
  upd = lambda s: np.concatenate([  # noqa: E731
      np.ravel(a - b) for a, b in zip(jax.tree.leaves(s.params),
                                       jax.tree.leaves(state.params))])
  cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
  u32 = upd(s32)
  noise_cosine = cos(u32, upd(s32_other))
  assert cos(u32, upd(s16)) >= min(noise_cosine, 0.98) - 0.01, (
      cos(u32, upd(s16)), noise_cosine)


def test_bfloat16_pgd_agrees_with_float32_on_the_same_inputs():
  f32, variables = tiny_models.trained_tiny_cnn()  # trained in float32
  bf16 = tiny_models.TinyCNN(dtype=jnp.bfloat16)
  n = 256
  x, y = (jnp.asarray(a) for a in tiny_models.test_points(n))
  keys = jax.random.split(jax.random.key(7), n)
  eps = 2 / 255

  def craft(model):
    logits_fn = lambda z: model.apply(variables, z)  # noqa: E731
    return jax.jit(functools.partial(
        attacks.pgd, logits_fn, eps=eps, step_size=0.5 / 255, steps=10))(
            x, y, key=keys)

  x32, x16 = craft(f32), craft(bf16)
  assert x16.dtype == jnp.float32
  # The projection and clip are float32: exactly inside the ball and box.
  assert float(jnp.max(jnp.abs(x16 - x))) <= eps + 1e-7
  assert float(x16.min()) >= 0 and float(x16.max()) <= 1

  judge = jax.jit(lambda z: jnp.argmax(  # every point judged in float32
      f32.apply(variables, z), -1) == y)
  clean = float(judge(x).mean())
  ok32, ok16 = np.asarray(judge(x32)), np.asarray(judge(x16))
  assert clean > 0.35, clean
  # The attack works in both precisions (well below clean accuracy) ...
  assert ok32.mean() < clean - 0.1 and ok16.mean() < clean - 0.1
  # ... and reaches the same robust accuracy on the same points.
  assert abs(ok16.mean() - ok32.mean()) <= 0.04, (ok16.mean(), ok32.mean())
  assert (ok16 == ok32).mean() >= 0.9


def test_loop_trains_in_bfloat16_and_saves_float32(tmp_path):
  config = at_config.get_config("pgd_at,smoke,dtype=bfloat16")
  config.progress_bar = False
  workdir = str(tmp_path / "bf16")
  report = train_and_evaluate(config, workdir)
  assert np.isfinite(report["train_loss"])
  assert 0 <= report["test_adv_acc"] <= report["test_clean_acc"] <= 1
  restored = checkpoint.load(workdir)
  assert _leaf_dtypes(restored["params"]) == {"float32"}
  assert restored["meta"]["model"]["name"] == "small_cnn"


def test_unsupported_dtype_is_refused_before_anything_is_written(tmp_path):
  config = at_config.get_config("pgd_at,smoke,dtype=float16")
  workdir = str(tmp_path / "f16")
  with pytest.raises(ConfigError, match="float16.*bfloat16"):
    train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)
