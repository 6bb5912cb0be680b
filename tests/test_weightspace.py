"""robustjax.weightspace: trees, interpolation, arithmetic, sharpness,
streaming, and the ``interpolate`` task end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import interpolate as interpolate_config
from robustjax import checkpoint, models, sharding, tasks
from robustjax.errors import ConfigError
from robustjax.weightspace import (arithmetic, batchnorm, curves,
                                   interpolate, sharpness, streaming, trees)

import tiny_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = {"name": "small_cnn", "width": 0.125, "num_classes": 10}


def _variables(seed, width=SPEC["width"]):
  model = models.create_model("small_cnn", num_classes=10, width=width)
  v = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
  # Distinct, non-trivial BN statistics for each model.
  v["batch_stats"] = jax.tree.map(
      lambda x: x + jax.random.uniform(jax.random.key(seed + 100), x.shape),
      v["batch_stats"])
  return model, jax.tree.map(np.asarray, v)


def _save(workdir, variables, spec=SPEC, step=7):
  return tiny_models.save_checkpoint(workdir, variables, spec, step)


@pytest.fixture(scope="module")
def pair():
  model, va = _variables(0)
  _, vb = _variables(1)
  return model, va, vb


@pytest.fixture(scope="module")
def wide():
  return _variables(0, width=0.25)[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pair):
  _, va, vb = pair
  root = tmp_path_factory.mktemp("ckpts")
  return (_save(str(root / "a"), va), _save(str(root / "b"), vb))


# ---------------------------------------------------------------- trees


def test_flatten_unflatten_and_select(pair):
  _, va, _ = pair
  flat = trees.flatten(va["params"])
  assert "conv1/kernel" in flat and "head/dense/bias" in flat
  back = trees.unflatten(flat)
  jax.tree.map(np.testing.assert_array_equal, back, va["params"])
  assert set(trees.select(va["params"], "head")) == {"head/dense/kernel",
                                                     "head/dense/bias"}
  assert set(trees.select(va["params"], "re:^conv[12]/kernel$")) == {
      "conv1/kernel", "conv2/kernel"}
  assert all("bias" not in p for p in trees.select(va["params"], "*",
                                                   exclude="*bias"))
  with pytest.raises(ConfigError, match="no parameter path matches"):
    trees.select(va["params"], "stage9/*")


def test_depth_order_follows_the_network(pair):
  _, va, _ = pair
  layers = trees.layers(va["params"])
  assert layers[0] == "conv1" and layers[-1] == "head/dense"
  assert layers.index("fc1") == len(layers) - 2
  resnet = ["head/dense", "stage1/block0/conv1", "stage10/block0/conv1",
            "stage2/block1/conv2", "stage2/block0/conv1", "stem/conv"]
  assert trees.depth_order(resnet) == [
      "stem/conv", "stage1/block0/conv1", "stage2/block0/conv1",
      "stage2/block1/conv2", "stage10/block0/conv1", "head/dense"]
  first_two = list(trees.select_by_depth(va["params"], 0, 2))
  assert {trees.layer_of(p) for p in first_two} == set(layers[:2])
  model = models.create_model("small_cnn", num_classes=10, width=0.125)
  order = trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert order[:3] == ["conv1", "bn1", "conv2"] and order[-1] == "head/dense"


def test_incompatible_trees_name_the_first_difference(pair, wide):
  _, va, _ = pair
  problems = trees.mismatches(va["params"], wide["params"])
  assert len(problems) > 1 and problems[0].startswith("conv1/kernel:")
  with pytest.raises(ConfigError) as err:
    trees.check_compatible(va["params"], wide["params"])
  message = str(err.value)
  assert "first difference at conv1/kernel: float32[3, 3, 3, 4] vs " \
         "float32[3, 3, 3, 8]" in message and "\n" not in message
  missing = dict(va["params"], extra={"kernel": np.zeros(3, np.float32)})
  with pytest.raises(ConfigError, match="extra/kernel: only in the second"):
    trees.check_compatible(va["params"], missing)
  with pytest.raises(ConfigError, match="do not match"):
    interpolate.interpolate(va["params"], wide["params"], 0.5)


# ---------------------------------------------------------- interpolation


def test_endpoints_exact_and_midpoint_linear(pair):
  _, va, vb = pair
  a, b = va["params"], vb["params"]
  for alpha, expected in ((0.0, a), (1.0, b)):
    out = interpolate.interpolate(a, b, alpha)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(
        np.asarray(x), y), out, expected)
  mid = interpolate.interpolate(a, b, 0.5)
  # Halving is exact in binary floating point, so this holds bit for bit.
  jax.tree.map(lambda m, x, y: np.testing.assert_array_equal(
      np.asarray(m), (x + y) * np.float32(0.5)), mid, a, b)


def test_per_layer_alphas(pair):
  _, va, vb = pair
  a, b = va["params"], vb["params"]
  out = trees.flatten(interpolate.interpolate(
      a, b, {"head/*": 0.0, "conv1": 1.0, "*": 0.5}))
  fa, fb = trees.flatten(a), trees.flatten(b)
  np.testing.assert_array_equal(out["head/dense/kernel"],
                                fa["head/dense/kernel"])
  np.testing.assert_array_equal(out["conv1/kernel"], fb["conv1/kernel"])
  np.testing.assert_allclose(out["fc1/kernel"], 0.5 * (fa["fc1/kernel"]
                                                       + fb["fc1/kernel"]))
  with pytest.raises(ConfigError, match="no alpha rule matches"):
    interpolate.interpolate(a, b, {"head/*": 0.0})
  # A list runs across depth: first layer 0, last layer 1, linear between.
  alphas = interpolate.resolve_alphas(a, [0.0, 1.0])
  layers = trees.layers(a)
  assert alphas["conv1/kernel"] == 0.0 and alphas["head/dense/bias"] == 1.0
  assert alphas["fc1/kernel"] == pytest.approx(
      layers.index("fc1") / (len(layers) - 1))


def test_alpha_outside_unit_interval_needs_permission(pair):
  _, va, vb = pair
  with pytest.raises(ConfigError, match="allow_extrapolation"):
    interpolate.interpolate(va["params"], vb["params"], 1.5)
  out = interpolate.interpolate(va["params"], vb["params"], 1.5,
                                allow_extrapolation=True)
  a, b = (trees.flatten(v["params"])["fc1/bias"] for v in (va, vb))
  np.testing.assert_allclose(trees.flatten(out)["fc1/bias"],
                             b + 0.5 * (b - a), atol=1e-6)


def test_non_float_leaves_and_batch_stats_modes(pair):
  model, va, vb = pair
  a = dict(va["params"], counter=np.int32(3))
  b = dict(vb["params"], counter=np.int32(9))
  assert int(interpolate.interpolate(a, b, 0.7)["counter"]) == 3
  assert int(interpolate.interpolate(a, b, 0.7,
                                     non_float="nearest")["counter"]) == 9
  mean = lambda v: trees.flatten(v["batch_stats"])["bn1/mean"]  # noqa: E731
  for mode, expected in (("keep_a", mean(va)), ("keep_b", mean(vb)),
                         ("interpolate", 0.5 * (mean(va) + mean(vb)))):
    out = interpolate.interpolate_variables(va, vb, 0.5, batch_stats=mode)
    np.testing.assert_allclose(mean(out), expected, rtol=1e-6)


def test_recomputed_batch_stats_are_the_average_batch_statistics(pair):
  model, va, vb = pair
  x = jax.random.uniform(jax.random.key(3), (16, 32, 32, 3))
  stats_fn = batchnorm.flax_stats_fn(model.apply)
  mid = interpolate.interpolate_variables(va, vb, 0.5)
  # Reference: Flax's update from zero statistics is 0.1 * batch statistic.
  zero = dict(mid, batch_stats=jax.tree.map(jnp.zeros_like,
                                            mid["batch_stats"]))
  halves = [jax.tree.map(lambda s: s / 0.1, stats_fn(zero, x[i:i + 8]))
            for i in (0, 8)]
  expected = jax.tree.map(lambda p, q: 0.5 * (p + q), *halves)
  out = interpolate.interpolate_variables(
      va, vb, 0.5, batch_stats="recompute", stats_fn=stats_fn,
      batches=[x[:8], x[8:]])
  jax.tree.map(lambda o, e: np.testing.assert_allclose(o, e, rtol=1e-3,
                                                       atol=1e-5),
               out["batch_stats"], expected)


def test_sharded_interpolation_equals_unsharded(pair):
  _, va, vb = pair
  mesh = sharding.make_mesh(8)
  assert mesh.devices.size == 8

  def shard(x):  # split the last axis over the 8 devices where it divides
    spec = P(*([None] * (x.ndim - 1)), "data") if x.ndim and \
        x.shape[-1] % 8 == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))

  a, b = (jax.tree.map(shard, v["params"]) for v in (va, vb))
  assert any(len(x.sharding.device_set) == 8 and not
             x.sharding.is_fully_replicated for x in jax.tree.leaves(a))
  out = interpolate.interpolate(a, b, 0.3)
  ref = interpolate.interpolate(va["params"], vb["params"], 0.3)
  jax.tree.map(lambda o, r, x: (np.testing.assert_array_equal(
      np.asarray(o), np.asarray(r)), x.sharding.is_equivalent_to(
          o.sharding, o.ndim) or pytest.fail("sharding changed")),
      out, ref, a)


# ------------------------------------------------------------ arithmetic


def test_add_then_subtract_a_delta_returns_the_original(pair):
  _, va, vb = pair
  base = va["params"]
  # Fine-tuned = base (1 + small): by Sterbenz's lemma ft - base is exact,
  # and so is base + (ft - base): the round trip is bit for bit.
  ft = jax.tree.map(lambda w, n: (w * (1 + 0.01 * n)).astype(w.dtype),
                    base, vb["params"])
  tv = arithmetic.task_vector(ft, base)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y),
               arithmetic.apply(base, tv), ft)
  # A delta of another scale: back to the original up to rounding.
  delta = arithmetic.scale(arithmetic.task_vector(vb["params"], base), 3.0)
  back = arithmetic.apply(arithmetic.apply(base, delta),
                          arithmetic.negate(delta))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6),
               back, base)
  total = arithmetic.add(delta, arithmetic.negate(delta))
  assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(total))


def test_ties_trim_elect_and_disjoint_mean():
  d1 = {"w": jnp.array([3.0, -1.0, 0.5, 2.0])}
  d2 = {"w": jnp.array([-1.0, -2.0, 0.1, 4.0])}
  trimmed = arithmetic.trim(d1, 0.5)
  # int(0.5 * 4) + 1 = 3 entries kept, as ties-merging's kthvalue rule.
  np.testing.assert_array_equal(trimmed["w"], [3.0, -1.0, 0.0, 2.0])
  merged = arithmetic.ties_merge([d1, d2], density=0.5)
  # trimmed: [3, -1, 0, 2] and [-1, -2, 0, 4]; signs elected: +, -, 0, +.
  np.testing.assert_allclose(merged["w"], [3.0, -1.5, 0.0, 3.0])
  # A zero sum takes the majority sign of the elected signs (+ here).
  tie = arithmetic.ties_merge([{"w": jnp.array([1.0, 5.0, 2.0])},
                               {"w": jnp.array([-1.0, 5.0, 2.0])}],
                              density=1.0)
  np.testing.assert_allclose(tie["w"], [1.0, 5.0, 2.0])
  # Per-leaf scope keeps the fraction in every leaf.
  two = {"a": jnp.arange(1.0, 11.0), "b": jnp.arange(101.0, 111.0)}
  per_leaf = arithmetic.trim(two, 0.2, scope="leaf")
  assert int(jnp.sum(per_leaf["a"] != 0)) == 2
  assert int(jnp.sum(arithmetic.trim(two, 0.2)["a"] != 0)) == 0
  with pytest.raises(ConfigError, match="density"):
    arithmetic.trim(d1, 0.0)


def test_dare_drops_and_rescales():
  delta = {"w": jnp.ones((100_000,)), "b": jnp.full((10,), 2.0)}
  key = jax.random.key(0)
  out = arithmetic.dare(delta, p=0.9, key=key)
  kept = out["w"] != 0
  assert 0.08 < float(jnp.mean(kept)) < 0.12
  np.testing.assert_allclose(out["w"][kept], 10.0, rtol=1e-6)
  assert abs(float(jnp.mean(out["w"])) - 1.0) < 0.05  # expectation kept
  same = arithmetic.dare(delta, p=0.0, key=key)
  np.testing.assert_array_equal(same["w"], delta["w"])
  with pytest.raises(ConfigError, match="drop rate"):
    arithmetic.dare(delta, p=1.0, key=key)


def test_layer_distances(pair):
  _, va, vb = pair
  dist = arithmetic.layer_distances(va["params"], va["params"])
  assert set(dist) == set(trees.layers(va["params"]))
  assert all(v == 0.0 for v in dist.values())
  dist = arithmetic.layer_distances(va["params"], vb["params"],
                                    relative=False)
  fa, fb = (trees.flatten(v["params"]) for v in (va, vb))
  expected = np.sqrt(np.sum((fa["fc1/kernel"] - fb["fc1/kernel"]) ** 2)
                     + np.sum((fa["fc1/bias"] - fb["fc1/bias"]) ** 2))
  assert dist["fc1"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------- sharpness


def _toy_problem():
  key = jax.random.key(0)
  params = {"dense": {"kernel": jax.random.normal(key, (8, 3)),
                      "bias": jnp.zeros(3)},
            "unused": {"kernel": jnp.ones((4, 4))}}
  x = jax.random.normal(jax.random.key(1), (32, 8))
  y = jnp.arange(32) % 3

  def loss_fn(p):
    logits = x @ p["dense"]["kernel"] + p["dense"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         y[:, None], -1))
  return loss_fn, params


@pytest.mark.parametrize("norm,adaptive", [("l2", False), ("linf", False),
                                           ("l2", True)])
def test_sharpness_zero_for_unused_layer_and_grows_with_rho(norm, adaptive):
  loss_fn, params = _toy_problem()
  values = []
  for rho in (0.01, 0.05, 0.2):
    res = sharpness.layer_sharpness(loss_fn, params, rho=rho, norm=norm,
                                    adaptive=adaptive, steps=5)
    assert res["unused"]["sharpness"] == 0.0
    values.append(res["dense"]["sharpness"])
  assert 0 < values[0] < values[1] < values[2]
  ranked = sharpness.rank_layers(res)
  assert ranked["ranking"][0][0] == "dense"
  assert "unused" not in ranked["stragglers"]


def test_sharpness_on_a_model_uses_one_compile(pair):
  model, va, _ = pair
  x = jax.random.uniform(jax.random.key(3), (8, 32, 32, 3))
  loss_fn = sharpness.classification_loss_fn(
      model.apply, va["batch_stats"], x, jnp.arange(8) % 10)
  res = sharpness.layer_sharpness(loss_fn, va["params"], rho=0.05, steps=2)
  assert list(res)[:2] == ["conv1", "bn1"] and len(res) == 10
  assert all(v["sharpness"] >= 0 for v in res.values())
  with pytest.raises(ConfigError, match="no float parameters under layer"):
    sharpness.layer_sharpness(loss_fn, va["params"], ["stage9"], rho=0.1)


# ---------------------------------------------------------------- curves


def test_loss_barrier_definitions():
  out = curves.loss_barrier([0.0, 0.5, 1.0], [1.0, 3.0, 2.0])
  assert out == {"barrier": 1.5, "barrier_linear": 1.5, "argmax_alpha": 0.5}
  out = curves.loss_barrier([0.0, 0.25, 1.0], [1.0, 1.0, 3.0])
  assert out["barrier"] == 1.0 and out["barrier_linear"] == 0.0
  with pytest.raises(ConfigError, match="alpha 0 and alpha 1"):
    curves.loss_barrier([0.0, 0.5], [1.0, 2.0])


def test_loss_barrier_known_answer_with_unequal_endpoints():
  """A hand-made curve on which the two definitions differ, pinning which
  number is which. Endpoint losses 1 and 3 (mean 2, chord 1 + 2t):

    t      0     0.25  0.5   0.75  1
    L(t)   1     3     2.5   3.25  3
    chord  1     1.5   2     2.5   3
  """
  out = curves.loss_barrier([0.0, 0.25, 0.5, 0.75, 1.0],
                            [1.0, 3.0, 2.5, 3.25, 3.0])
  # Peak minus the endpoint mean (Frankle et al. 2020, Git Re-Basin):
  # 3.25 - 2 at t = 0.75.
  assert out["barrier"] == 1.25
  # Largest excess over the chord (Entezari et al. 2022): 3 - 1.5 at
  # t = 0.25, a different point from the loss's peak.
  assert out["barrier_linear"] == 1.5
  assert out["argmax_alpha"] == 0.75


def test_curve_evaluator_agrees_with_evaluation(pair):
  from configs import common
  from robustjax import attacks, data, evaluation
  model, va, vb = pair
  split = data.load_split("cifar10", "test")
  mesh = sharding.make_mesh(1)
  attack = attacks.build(common.pgd_attack(2))
  eval_fn = curves.make_evaluator(model, split, mesh, attack=attack,
                                  batch_size=32, num_examples=48)
  curve = curves.interpolation_curve(eval_fn, va, vb, [0.0, 1.0])
  ref = evaluation.evaluate(model, vb, split, mesh, attack=attack,
                            batch_size=32, num_examples=48)
  assert curve[1]["clean_acc"] == ref["clean_acc"]
  assert curve[1]["adv_acc"] == ref["adv_acc"]
  assert curve[1]["adv_loss"] >= curve[1]["clean_loss"]
  with pytest.raises(ConfigError, match="allow_extrapolation"):
    curves.interpolation_curve(eval_fn, va, vb, [0.0, -0.5])


# ------------------------------------------------------------- streaming


def test_streaming_equals_in_memory(saved, pair, tmp_path):
  _, va, vb = pair
  out = streaming.interpolate_checkpoints(
      saved[0], saved[1], str(tmp_path / "mid"), 0.25, chunk_bytes=4096)
  loaded = checkpoint.load(out)
  ref = interpolate.interpolate_variables(va, vb, 0.25)
  for name in ("params", "batch_stats"):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, np.asarray(y)),
                 loaded[name], ref[name])
  assert loaded["step"] == 7 and loaded["meta"]["model"] == SPEC
  assert loaded["meta"]["weightspace"]["alpha"] == 0.25
  with pytest.raises(ConfigError, match="already holds a checkpoint"):
    streaming.interpolate_checkpoints(saved[0], saved[1],
                                      str(tmp_path / "mid"), 0.5)

  # Task arithmetic on disk, each leaf restored sharded over 8 devices.
  mesh = sharding.make_mesh(8)

  def sharding_fn(path, shape):
    return NamedSharding(mesh, P("data") if shape and shape[0] % 8 == 0
                         else P())
  out = streaming.add_checkpoints(saved[0], saved[1], str(tmp_path / "sum"),
                                  minus=saved[0], coefficient=0.5,
                                  sharding_fn=sharding_fn, chunk_bytes=4096)
  tv = arithmetic.task_vector(vb["params"], va["params"])
  ref = arithmetic.apply(va["params"], tv, 0.5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7),
               checkpoint.load(out)["params"], ref)


# ------------------------------------------------------- the task, launch


def _task_config(saved, **overrides):
  config = interpolate_config.get_config("smoke")
  config.checkpoint_a, config.checkpoint_b = saved
  config.num_devices = 1
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("overrides,message", [
    ({"checkpoint_b": "/nonexistent/run"}, "no checkpoint found"),
    ({"alphas": (0.0, 1.2)}, "alpha=1.2 is outside [0, 1]"),
    ({"batch_stats": "mean"}, "batch_stats='mean'"),
    ({"ood.corruptions": "benchmark15", "eval.attack.eps": 2.0},
     "outside [0, 1]"),
])
def test_interpolate_bad_input_writes_nothing(saved, tmp_path, overrides,
                                              message):
  config = _task_config(saved)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as err:
    tasks.run(config, str(workdir))
  assert message in str(err.value) and "\n" not in str(err.value)
  assert not workdir.exists()


def test_interpolate_mismatched_checkpoints(saved, wide, tmp_path):
  other = _save(str(tmp_path / "wide"), wide, dict(SPEC, width=0.25))
  with pytest.raises(ConfigError, match="first difference at "
                     "params/conv1/kernel"):
    tasks.run(_task_config((saved[0], other)), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def _launch(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_interpolate_task_through_launch(saved, tmp_path):
  workdir = tmp_path / "curve"
  result = _launch("--config=configs/interpolate.py:smoke",
                   f"--config.checkpoint_a={saved[0]}",
                   f"--config.checkpoint_b={saved[1]}",
                   "--config.sharpness.enabled=true", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "report:" in result.stdout and "b_adv_acc" in result.stdout
  barrier_lines = [line for line in result.stderr.splitlines()
                   if "loss barrier" in line]
  assert len(barrier_lines) == 2, result.stderr[-3000:]
  assert all("over the endpoint mean" in line and "over the chord" in line
             for line in barrier_lines), barrier_lines
  report = json.loads((workdir / "report.json").read_text())
  assert [p["alpha"] for p in report["curve"]] == [0.0, 0.5, 1.0]
  assert {"clean_acc", "clean_loss", "adv_acc", "adv_loss"} <= set(
      report["curve"][0])
  assert np.isfinite(report["adv_barrier"]["barrier"])
  assert report["clean_barrier"]["barrier_linear"] >= 0.0
  assert set(report["sharpness"]["a"]["by_layer"]) == set(
      report["layer_distance"])
  assert (workdir / "interpolation.png").stat().st_size > 1000
  # Bad input through the CLI: one error line, exit 2, nothing written.
  bad = tmp_path / "bad"
  result = _launch("--config=configs/interpolate.py:smoke",
                   f"--config.checkpoint_a={saved[0]}",
                   f"--config.checkpoint_b={saved[1]}",
                   "--config.alphas=(0.0, 1.5)", f"--workdir={bad}")
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
  assert "allow_extrapolation" in errors[0] and not bad.exists()


def test_notebook_runs_top_to_bottom(saved, tmp_path):
  """experiments/weight_space.ipynb on the tiny checkpoints, via nbclient."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  notebook = nbformat.read(os.path.join(ROOT, "experiments",
                                        "weight_space.ipynb"), as_version=4)
  env = {"WS_CHECKPOINT_A": saved[0], "WS_CHECKPOINT_B": saved[1],
         "WS_NUM_EXAMPLES": "32", "WS_BATCH_SIZE": "32", "WS_PGD_STEPS": "2",
         "WS_NUM_ALPHAS": "3", "WS_SHARPNESS_EXAMPLES": "16",
         "WS_SHARPNESS_STEPS": "2",
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  old = {k: os.environ.get(k) for k in [*env, "MPLBACKEND"]}
  os.environ.update(env)  # the kernel inherits this process's environment
  os.environ.pop("MPLBACKEND", None)  # the inline backend renders the PNGs
  try:
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3",
        resources={"metadata": {"path": ROOT}})
    client.execute()
  finally:
    for key, value in old.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
  outputs = "".join(o.get("text", "") for cell in notebook.cells
                    if cell.cell_type == "code" for o in cell.outputs)
  assert "barrier" in outputs and "stragglers:" in outputs
  images = [o for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3  # curve, distances, sharpness
