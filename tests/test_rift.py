"""RiFT (robustjax/rift/, robustjax/tasks/rift.py): MRC, module choice, masked fine-tuning,
interpolation and alpha selection, and the ``rift`` task end to end."""

import json
import os
import re
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
from robustjax.tasks import common as task_common
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
                   epsilon=0.1, epochs=3, steps_per_epoch=2, mesh=mesh)
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


@pytest.mark.parametrize("n,rows", [(1000, 50), (300, 15)])
def test_mrc_takes_the_references_steps_per_epoch_whatever_the_set_size(
    n, rows, monkeypatch):
  # The reference ascends with batches of 512 over the 10,000 test points:
  # ceil(10000 / 512) = 20 steps an epoch. mrc takes 20 on any set: count
  # the calls of its compiled ascent step.
  calls = []
  jit = jax.jit

  def counting_jit(fn, *args, **kwargs):
    compiled = jit(fn, *args, **kwargs)
    if getattr(fn, "__name__", "") != "ascent":
      return compiled

    def call(*a, **k):
      calls.append(1)
      return compiled(*a, **k)
    return call

  monkeypatch.setattr(jax, "jit", counting_jit)
  model = DeadBranchNet()
  x = jax.random.uniform(jax.random.key(0), (n, 8, 8, 3))
  y = jax.random.randint(jax.random.key(1), (n,), 0, 10)
  v = model.init(jax.random.key(2), x[:1])
  mesh = sharding.make_mesh(None)  # 8 devices: the width is rounded to 8
  table = rift.mrc(model.apply, v, np.asarray(x), np.asarray(y),
                   modules=["fc", "head"], epochs=2, mesh=mesh)
  assert len(calls) == 2 * 2 * 20  # modules x epochs x steps
  assert -(-10000 // 512) == rift.REFERENCE_STEPS_PER_EPOCH == 20
  for r in table:
    assert r["ascent_steps"] == 2 * 20, r
    assert r["batch_size"] == rows, r
  # An explicit batch size instead: ceil(n / 128) steps an epoch.
  table = rift.mrc(model.apply, v, np.asarray(x), np.asarray(y),
                   modules=["fc"], epochs=1, steps_per_epoch=0,
                   batch_size=128, mesh=mesh)
  assert table[0]["ascent_steps"] == -(-n // 128)
  with pytest.raises(ConfigError, match="set one of mrc.steps_per_epoch"):
    rift.mrc(model.apply, v, np.asarray(x), np.asarray(y), batch_size=128,
             mesh=mesh)


def test_ascent_plan_covers_every_point_once_an_epoch():
  # The reference's own set: 20 steps of at most 500 points.
  assert rift.ascent_plan(10000) == (20, 500)
  assert rift.ascent_plan(10000, steps_per_epoch=0, batch_size=512) == (
      20, 512)
  assert rift.ascent_plan(1000, num_devices=8) == (20, 56)
  assert rift.ascent_plan(256) == (20, 13)
  assert rift.ascent_plan(7) == (7, 1)  # at most one step per point
  for n, steps, bs in ((1000, 20, 0), (256, 20, 0), (1000, 0, 128)):
    plan_steps, width = rift.ascent_plan(n, steps_per_epoch=steps,
                                         batch_size=bs, num_devices=8)
    order = np.random.default_rng(0).permutation(n)
    batches = list(rift.epoch_batches(order, plan_steps, width,
                                       batch_size=bs))
    assert len(batches) == plan_steps
    real = np.concatenate([rows[mask > 0] for rows, mask in batches])
    np.testing.assert_array_equal(real, order)
    assert all(len(rows) == width for rows, _ in batches)


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
  """``finetune``'s optimizer: total steps -> (tx, schedule)."""
  import ml_collections
  from robustjax.training import optimizer
  cfg = ml_collections.ConfigDict(dict(
      lr=lr, momentum=0.9, nesterov=False, weight_decay=5e-4,
      weight_decay_on="all", schedule="piecewise", boundaries=(0.5,),
      decay=0.1, warmup_steps=0))
  return lambda total: optimizer.make_optimizer(cfg, total)


def _same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == \
      b.tobytes()


@pytest.mark.parametrize("bn", ["train", "keep_a"])
def test_finetune_changes_only_the_chosen_kernel(small, train_split, bn):
  model, v = small
  mesh = sharding.make_mesh(None)  # 8 fake devices: the sharded path
  accs = iter([0.3, 0.5, 0.4])
  out, history = rift.finetune(
      model.apply, v, "conv3", train_split, mesh, optimizer=_opt(),
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
                         optimizer=_opt(), epochs=3, batch_size=32,
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


def _dataset_meta(val_size, val_seed=0, classes=""):
  """The dataset block a training run saves in its checkpoint's meta."""
  return {"name": "cifar10", "source": "embedded", "data_dir": "",
          "val_size": val_size, "val_seed": val_seed, "augment": True,
          "classes": classes}


def _save_checkpoint(workdir, variables, dataset, spec=SPEC):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 async_save=False)
  ckpt.save(5, {"params": variables["params"],
                "batch_stats": variables["batch_stats"],
                "step": np.int32(5)},
            {"model": spec} if dataset is None else {"model": spec,
                                                     "dataset": dataset})
  ckpt.close()
  return workdir


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, small):
  """An untrained small_cnn saved as a training run with
  ``dataset.val_size=64`` would be: a checkpoint with no robustness."""
  _, v = small
  return _save_checkpoint(str(tmp_path_factory.mktemp("robust") / "run"), v,
                          _dataset_meta(64))


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


def test_rift_refuses_a_checkpoint_that_held_out_nothing(small, tmp_path):
  # Trained with dataset.val_size=0: every training point was trained on,
  # so the default selection split would leak.
  _, v = small
  path = _save_checkpoint(str(tmp_path / "at"), v, _dataset_meta(0))
  workdir = str(tmp_path / "rift")
  with pytest.raises(ConfigError) as err:
    tasks.run(_smoke(path), workdir)
  message = str(err.value)
  assert "held out no training points" in message and "\n" not in message
  assert "--config.dataset.val_size=N" in message
  assert "selection='paper'" in message
  assert not os.path.exists(workdir)
  # A checkpoint with no dataset record at all is refused the same way.
  bare = str(tmp_path / "bare")
  _save_checkpoint(bare, v, None)
  with pytest.raises(ConfigError, match="held out no training points"):
    tasks.run(_smoke(bare), workdir)
  # Test-set selection needs no held-out split.
  task_common.checkpoint_splits({"dataset": _dataset_meta(0)},
                           _smoke(path).dataset, require_holdout=False)


def test_rift_selects_on_the_checkpoints_held_out_points(small, tmp_path,
                                                         monkeypatch):
  _, v = small
  size, seed = 96, 3
  path = _save_checkpoint(str(tmp_path / "at"), v, _dataset_meta(size, seed))
  want_train, want_val = data.holdout_split(data.load_split("cifar10",
                                                            "train"),
                                            size, seed=seed)
  seen = {}

  class Stop(Exception):
    pass

  # Spies record the splits the task hands each stage (no attack, no
  # ascent: only which rows go where is under test here).
  def spy_adversarial_set(apply_fn, variables, split, mesh, *, num_examples,
                          **kwargs):
    seen["select"] = split
    return (data.to_float(split.images[:num_examples]),
            split.labels[:num_examples])

  def spy_mrc(apply_fn, variables, images, labels, *, modules, **kwargs):
    return [{"module": m, "mrc": 0.0} for m in modules]

  def spy_finetune(apply_fn, variables, module, train_split, *args, **kw):
    seen["train"] = train_split
    raise Stop

  monkeypatch.setattr(rift, "adversarial_set", spy_adversarial_set)
  monkeypatch.setattr(rift, "mrc", spy_mrc)
  monkeypatch.setattr(rift, "finetune", spy_finetune)
  with pytest.raises(Stop):
    tasks.run(_smoke(path), str(tmp_path / "rift"))
  # The MRC set and selection split: exactly the rows the run held out.
  np.testing.assert_array_equal(seen["select"].images, want_val.images)
  np.testing.assert_array_equal(seen["select"].labels, want_val.labels)
  # Fine-tuning: exactly the rest, the rows it trained on.
  assert len(seen["train"]) == 50000 - size
  np.testing.assert_array_equal(seen["train"].images, want_train.images)
  np.testing.assert_array_equal(seen["train"].labels, want_train.labels)


def test_checkpoint_splits_class_subsets_and_mismatches(tiny_checkpoint):
  config = _smoke(tiny_checkpoint)
  # A checkpoint trained on classes 5-9 holds out rows of those classes,
  # relabelled 0..4, as its training loop did (subset, then holdout).
  meta = {"dataset": _dataset_meta(40, 1, classes="5-9")}
  used, train, val = task_common.checkpoint_splits(meta, config.dataset,
                                             require_holdout=True)
  full = data.load_split("cifar10", "train")
  want_train, want_val = data.holdout_split(
      data.class_subset(full, (5, 6, 7, 8, 9)), 40, seed=1)
  np.testing.assert_array_equal(val.images, want_val.images)
  np.testing.assert_array_equal(train.labels, want_train.labels)
  assert train.num_classes == val.num_classes == 5
  assert used["classes"] == "5-9" and used["val_size"] == 40
  cases = [
      ({"val_size": 10}, {}, "val_size=10 but"),
      ({}, {"source": "tfds"}, "--config.dataset.source=embedded"),
      ({}, {"classes": "0-4"}, "trained on classes '5-9'"),
      ({}, {"name": "svhn"}, "--config.dataset.name=cifar10"),
  ]
  for kwargs, dataset, message in cases:
    ds = config.dataset.copy_and_resolve_references()
    ds.update(dataset)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
      task_common.checkpoint_splits(meta, ds, require_holdout=True, **kwargs)
    assert "\n" not in str(err.value)
  # The matching cross-check passes.
  task_common.checkpoint_splits(meta, config.dataset, require_holdout=True,
                           val_size=40)


def test_training_meta_records_the_holdout_that_rift_rebuilds():
  import ml_collections
  from configs import common
  from robustjax.training import loop
  config = common.base_config()
  config.dataset.update(classes="0-4", val_size=300, val_seed=7)
  meta = loop.dataset_meta(config.dataset)  # what checkpoints save
  assert (meta["val_size"], meta["val_seed"], meta["classes"]) == (
      300, 7, "0-4")
  train, val, _ = loop.load_data(config)
  _, r_train, r_val = task_common.checkpoint_splits(
      {"dataset": meta}, rift_config.get_config("smoke").dataset,
      require_holdout=True)
  for mine, theirs in ((r_train, train), (r_val, val)):
    np.testing.assert_array_equal(mine.images, theirs.images)
    np.testing.assert_array_equal(mine.labels, theirs.labels)
  # A dataset block without the holdout keys records them as 0.
  bare = loop.dataset_meta(ml_collections.ConfigDict(
      {"name": "cifar10", "source": "embedded"}))
  assert (bare["val_size"], bare["val_seed"]) == (0, 0)


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
  # It carries its input's dataset record, so used as RiFT's input again
  # it selects on the same held-out rows (and says they were used).
  assert report["held_out"] == {"val_size": 64, "val_seed": 0}
  config = _smoke(str(workdir))
  _, _, again = task_common.checkpoint_splits(final["meta"], config.dataset,
                                         require_holdout=True)
  _, _, first = task_common.checkpoint_splits(checkpoint.load(tiny_checkpoint)[
      "meta"], config.dataset, require_holdout=True)
  np.testing.assert_array_equal(again.images, first.images)


def test_config_args():
  c = rift_config.get_config("paper,module=stage2/block2/conv2,bn=keep_a")
  assert c.task == "rift" and c.selection == "paper"
  assert c.module.choice == "path" and c.module.path == "stage2/block2/conv2"
  assert c.finetune.bn == "keep_a"
  c = rift_config.get_config("module=middle")
  assert c.module.choice == "middle" and c.selection == "val"
  assert c.alphas == tuple(round(0.1 * i, 1) for i in range(11))
  # The selection split is the checkpoint's own; the ascent the reference's.
  assert c.val_size == 0
  assert (c.mrc.steps_per_epoch, c.mrc.batch_size) == (20, 0)
  assert "launch.py --config=configs/rift.py" in rift_config.__doc__
