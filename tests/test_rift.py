"""RiFT (robustjax/rift.py): MRC, module choice, masked fine-tuning,
interpolation and alpha selection, and the ``rift`` task end to end."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rift as rift_config
from robustjax import checkpoint, data, models, rift, sharding, tasks
from robustjax.errors import ConfigError
from robustjax.weightspace import trees

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = {"name": "small_cnn", "width": 0.125, "num_classes": 10}


class DeadBranchNet(nn.Module):
  """conv - dense - head, plus a dense module whose output is discarded
  (like the unused ``sub_block1`` of the reference's WRN)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3), (2, 2), name="conv")(x))
    x = x.reshape((x.shape[0], -1))
    _ = nn.Dense(4, name="unused")(x)
    x = nn.relu(nn.Dense(16, name="fc")(x))
    return nn.Dense(10, name="head")(x)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(1)


@pytest.fixture(scope="module")
def small():
  model = models.create_model("small_cnn", num_classes=10, width=0.125)
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  return model, jax.tree.map(np.asarray, v)


@pytest.fixture(scope="module")
def train_split():
  split = data.load_split("cifar10", "test")  # any labelled images will do
  return split.take(np.arange(256))


# ---------------------------------------------------------------- modules


def test_kernel_modules_and_bad_module_paths(small):
  _, v = small
  assert rift.kernel_modules(v["params"]) == [
      "conv1", "conv2", "conv3", "conv4", "fc1", "head/dense"]
  assert rift.check_module(v["params"], "conv2/kernel") == "conv2"
  with pytest.raises(ConfigError, match="not in the checkpoint") as err:
    rift.check_module(v["params"], "stage9/block1/conv2")
  assert "\n" not in str(err.value)
  with pytest.raises(ConfigError, match="no conv or dense kernel"):
    rift.check_module(v["params"], "bn1")
  with pytest.raises(ConfigError, match="no conv or dense kernel"):
    rift.check_module(v["params"], "fc1/bias")


def test_projection_keeps_relative_frobenius_norm():
  w = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
  big = 10 * jax.random.normal(jax.random.key(1), w.shape)
  out = rift.project(big, w, 0.1)
  np.testing.assert_allclose(jnp.linalg.norm(out), 0.1 * jnp.linalg.norm(w),
                             rtol=1e-6)
  # Same direction, only rescaled (one norm over the whole tensor).
  np.testing.assert_allclose(out / jnp.linalg.norm(out),
                             big / jnp.linalg.norm(big), atol=1e-6)
  small_delta = 1e-4 * big
  np.testing.assert_array_equal(rift.project(small_delta, w, 0.1),
                                small_delta)


# ------------------------------------------------------------------- MRC


def test_irrelevant_module_has_zero_mrc_and_is_chosen(mesh):
  model = DeadBranchNet()
  x = jax.random.uniform(jax.random.key(0), (64, 8, 8, 3))
  y = jax.random.randint(jax.random.key(1), (64,), 0, 10)
  v = model.init(jax.random.key(2), x[:1])
  table = rift.mrc(model.apply, v, np.asarray(x), np.asarray(y),
                   epsilon=0.1, epochs=3, batch_size=32, mesh=mesh)
  by_module = {r["module"]: r for r in table}
  assert set(by_module) == {"conv", "unused", "fc", "head"}
  assert by_module["unused"]["mrc"] == 0.0
  for name in ("conv", "fc", "head"):
    assert by_module[name]["mrc"] > 1e-3, table
  assert [r["mrc"] for r in table] == sorted(r["mrc"] for r in table)
  # The perturbation at the worst point stays within its norm.
  for r in table:
    assert r["rel_norm"] <= 0.1 * (1 + 1e-5), r
  assert max(r["rel_norm"] for r in table) > 0.09  # the ball is used
  assert rift.choose_module(table) == "unused"


def test_choose_module_rules():
  table = [{"module": m, "mrc": s} for m, s in [
      ("stem/conv", 0.5), ("s1/conv1", 0.02), ("s2/conv1", 0.03),
      ("s2/conv2", 0.04), ("s3/conv1", 0.9), ("head/dense", 0.01)]]
  order = ["stem/conv", "s1/conv1", "s2/conv1", "s2/conv2", "s3/conv1",
           "head/dense"]
  assert rift.choose_module(table, "lowest") == "head/dense"
  # Lowest half (3 modules): head/dense, s1/conv1, s2/conv1; nearest the
  # middle of 6 (position 2.5) is s2/conv1 (position 2).
  assert rift.choose_module(table, "middle", order=order,
                            fraction=0.5) == "s2/conv1"
  assert rift.choose_module(table, "path", path="s3/conv1/kernel") == \
      "s3/conv1"
  with pytest.raises(ConfigError, match="not a conv/dense module"):
    rift.choose_module(table, "path", path="s9/conv")
  with pytest.raises(ConfigError, match="not one of"):
    rift.choose_module(table, "random")


# ------------------------------------------------------------ fine-tuning


def _opt(lr=0.05):
  import ml_collections
  return ml_collections.ConfigDict(dict(
      lr=lr, momentum=0.9, nesterov=False, weight_decay=5e-4,
      weight_decay_on="all", schedule="piecewise", boundaries=(0.5,),
      decay=0.1, warmup_steps=0))


def _same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == \
      b.tobytes()


@pytest.mark.parametrize("bn", ["train", "frozen"])
def test_finetune_changes_only_the_chosen_kernel(small, train_split, bn):
  model, v = small
  mesh = sharding.make_mesh(None)  # 8 fake devices: the sharded path
  accs = iter([0.3, 0.5, 0.4])
  out, history = rift.finetune(
      model.apply, v, "conv3", train_split, mesh, optimizer_cfg=_opt(),
      epochs=3, batch_size=32, steps_per_epoch=2, bn=bn,
      eval_fn=lambda _: next(accs))
  assert [h["epoch"] for h in history] == [1, 2, 3]
  before, after = trees.flatten(v["params"]), trees.flatten(out["params"])
  assert set(before) == set(after)
  for path in before:
    if path == "conv3/kernel":
      assert not np.array_equal(before[path], after[path])
    else:
      assert _same_bits(before[path], after[path]), path
  stats_b = trees.flatten(v["batch_stats"])
  stats_a = trees.flatten(out["batch_stats"])
  moved = [p for p in stats_b if not _same_bits(stats_b[p], stats_a[p])]
  if bn == "train":  # the reference re-estimates every BN layer's stats
    assert len(moved) == len(stats_b)
  else:
    assert not moved


def test_finetune_keeps_the_best_epoch(small, train_split):
  model, v = small
  mesh = sharding.make_mesh(1)
  seen = []

  def eval_fn(variables):
    seen.append(np.asarray(variables["params"]["conv2"]["kernel"]).copy())
    return [0.2, 0.6, 0.1][len(seen) - 1]
  out, _ = rift.finetune(model.apply, v, "conv2", train_split, mesh,
                         optimizer_cfg=_opt(), epochs=3, batch_size=32,
                         steps_per_epoch=1, eval_fn=eval_fn)
  np.testing.assert_array_equal(out["params"]["conv2"]["kernel"], seen[1])


# ---------------------------------------------------------- interpolation


def test_interpolation_endpoints_are_exact(small):
  _, va = small
  vb = jax.tree.map(lambda x: np.asarray(x) * 1.5 + 0.25, va)
  for alpha, want in ((0.0, va), (1.0, vb)):
    got = rift.interpolate_states(va, vb, alpha)
    jax.tree.map(lambda g, w: np.testing.assert_array_equal(g, w), got, want)
  mid = rift.interpolate_states(va, vb, 0.3)
  k_a = va["params"]["conv1"]["kernel"]
  k_b = vb["params"]["conv1"]["kernel"]
  np.testing.assert_allclose(mid["params"]["conv1"]["kernel"],
                             0.7 * k_a + 0.3 * k_b, rtol=1e-5, atol=1e-7)
  # BatchNorm statistics are interpolated too (the whole state dict).
  np.testing.assert_allclose(
      mid["batch_stats"]["bn1"]["var"],
      0.7 * va["batch_stats"]["bn1"]["var"]
      + 0.3 * vb["batch_stats"]["bn1"]["var"], rtol=1e-5)
  with pytest.raises(ConfigError, match="outside"):
    rift.interpolate_states(va, vb, 1.2)


def test_alpha_grid_and_selection_rule():
  with pytest.raises(ConfigError, match="outside \\[0, 1\\]"):
    rift.check_alphas([0.0, 0.5, 1.5])
  with pytest.raises(ConfigError, match="outside \\[0, 1\\]"):
    rift.check_alphas([-0.1])
  with pytest.raises(ConfigError, match="empty"):
    rift.check_alphas([])
  curve = [{"alpha": 0.0, "clean_acc": 0.80, "adv_acc": 0.500},
           {"alpha": 0.5, "clean_acc": 0.82, "adv_acc": 0.5005},
           {"alpha": 0.7, "clean_acc": 0.83, "adv_acc": 0.4990},
           {"alpha": 0.9, "clean_acc": 0.85, "adv_acc": 0.4980},
           {"alpha": 1.0, "clean_acc": 0.86, "adv_acc": 0.45}]
  # Within 0.1 points of 50.0%: alphas 0, 0.5 and 0.7; best clean is 0.7.
  assert rift.select_alpha(curve, 0.5, 0.001)["alpha"] == 0.7
  assert rift.select_alpha(curve, 0.5, 0.0)["alpha"] == 0.5
  assert rift.select_alpha(curve, 0.5, 1.0)["alpha"] == 1.0


# ------------------------------------------------------------- the task


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, small):
  """An untrained small_cnn saved as a training run would be: a checkpoint
  with no robustness at all."""
  _, v = small
  workdir = str(tmp_path_factory.mktemp("robust") / "run")
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 async_save=False)
  ckpt.save(5, {"params": v["params"], "batch_stats": v["batch_stats"],
                "step": np.int32(5)}, {"model": SPEC})
  ckpt.close()
  return workdir


def _smoke(path):
  config = rift_config.get_config("smoke")
  config.checkpoint_path = path
  return config


@pytest.mark.parametrize("override,message", [
    ({"module.choice": "path", "module.path": "stage9/conv"},
     "not in the checkpoint"),
    ({"module.choice": "path", "module.path": "bn2"},
     "no conv or dense kernel"),
    ({"alphas": (0.0, 0.5, 2.0)}, "outside [0, 1]"),
    ({"selection": "test"}, "not one of"),
    ({"finetune.bn": "eval"}, "not one of"),
    ({"checkpoint_path": ""}, "set --config.checkpoint_path"),
])
def test_rift_bad_input_stops_before_writing(tiny_checkpoint, tmp_path,
                                             override, message):
  config = _smoke(tiny_checkpoint)
  for key, value in override.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  workdir = str(tmp_path / "rift")
  with pytest.raises(ConfigError) as err:
    tasks.run(config, workdir)
  assert message in str(err.value) and "\n" not in str(err.value)
  assert not os.path.exists(workdir)


def test_rift_task_end_to_end_via_launch(tiny_checkpoint, tmp_path):
  workdir = tmp_path / "rift"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/rift.py:smoke",
       f"--config.checkpoint_path={tiny_checkpoint}", f"--workdir={workdir}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "report:" in result.stdout and "after_clean_acc" in result.stdout
  # An untrained checkpoint is not robust: a clear warning.
  assert "the checkpoint is not robust" in result.stderr
  report = json.loads((workdir / "report.json").read_text())
  assert report["warnings"] and report["selection"] == "val"
  assert [p["alpha"] for p in report["curve"]] == [0.0, 0.5, 1.0]
  assert report["alpha"] in (0.0, 0.5, 1.0)
  assert report["module"] == report["mrc"][0]["module"]
  assert len(report["mrc"]) == 6
  for name in ("mrc.csv", "mrc.png", "interpolation.png", "metrics.jsonl"):
    assert (workdir / name).exists(), name
  # The fine-tuned checkpoint differs from the robust one only in the
  # chosen kernel (and the BatchNorm statistics).
  robust = trees.flatten(checkpoint.load(tiny_checkpoint)["params"])
  tuned = trees.flatten(checkpoint.load(str(workdir / "finetuned"))["params"])
  changed = [p for p in robust if not np.array_equal(robust[p], tuned[p])]
  assert changed == [report["module"] + "/kernel"]
  # The final model is the workdir's checkpoint, at the chosen alpha.
  final = checkpoint.load(str(workdir))
  assert final["meta"]["rift"]["alpha"] == report["alpha"]


def test_config_args():
  c = rift_config.get_config("paper,module=stage2/block2/conv2,bn=frozen")
  assert c.task == "rift" and c.selection == "paper"
  assert c.module.choice == "path" and c.module.path == "stage2/block2/conv2"
  assert c.finetune.bn == "frozen"
  c = rift_config.get_config("module=middle")
  assert c.module.choice == "middle" and c.selection == "val"
  assert c.alphas == tuple(round(0.1 * i, 1) for i in range(11))
  assert "launch.py --config=configs/rift.py" in rift_config.__doc__
