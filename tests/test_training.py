"""Training: the loss goes down, every objective runs end to end through the
loop, resume reproduces an uninterrupted run bit for bit, and the 8-device
data-parallel step equals the single-device step."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import at as at_config
from robustjax import checkpoint, data, models, sharding
from robustjax.metrics import read_metrics
from robustjax.training import objectives, optimizer, step as step_lib
from robustjax.training.loop import train_and_evaluate


def smoke_config(objective: str = "pgd_at") -> ml_collections.ConfigDict:
  config = at_config.get_config(f"{objective},smoke")
  config.progress_bar = False
  return config


def _step_parts(objective: str, mesh, *, model_name="small_cnn", width=0.25,
                lr=0.05):
  model = models.create_model(model_name, num_classes=10, width=width)
  obj_cfg = ml_collections.ConfigDict(dict(
      name=objective, eps=8 / 255, step_size=2 / 255, steps=2, beta=6.0,
      random_start=True))
  opt_cfg = ml_collections.ConfigDict(dict(
      lr=lr, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="constant"))
  tx, schedule = optimizer.make_optimizer(opt_cfg, 100)
  objective_fn = objectives.make_objective(obj_cfg, model)
  state = step_lib.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  train_step = step_lib.make_train_step(objective_fn, tx, schedule, mesh,
                                        augment=True)
  return sharding.put_replicated(state, mesh), train_step


@pytest.fixture(scope="module")
def real_batch():
  split = data.load_split("cifar10", "test")
  return {"image": split.images[:64], "label": split.labels[:64]}


def test_few_steps_lower_the_loss(real_batch):
  mesh = sharding.make_mesh(1)
  state, train_step = _step_parts("standard", mesh, lr=0.02)
  batch = sharding.put_global_batch(real_batch, mesh)
  key = sharding.put_replicated(jax.random.key(1), mesh)
  losses = []
  for _ in range(25):
    state, metrics = train_step(state, batch, key)
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-5:]) < losses[0] - 0.3, losses


@pytest.mark.parametrize("objective", ["pgd_at", "trades", "mart", "fgsm_rs"])
def test_adversarial_step_is_finite_and_learns(objective, real_batch):
  mesh = sharding.make_mesh(1)
  state, train_step = _step_parts(objective, mesh, lr=0.02)
  batch = sharding.put_global_batch(real_batch, mesh)
  key = sharding.put_replicated(jax.random.key(1), mesh)
  losses = []
  for _ in range(12):
    state, metrics = train_step(state, batch, key)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert int(state.step) == 12
  assert np.mean(losses[-3:]) < losses[0], losses


def test_sharded_step_equals_single_device_step(real_batch):
  """Data parallelism over 8 fake devices computes the same update (BatchNorm
  statistics are over the global batch either way)."""
  results = []
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    state, train_step = _step_parts("pgd_at", mesh)
    batch = sharding.put_global_batch(
        {k: v[:32] for k, v in real_batch.items()}, mesh)
    assert batch["image"].sharding.num_devices == n
    key = sharding.put_replicated(jax.random.key(3), mesh)
    for _ in range(2):
      state, metrics = train_step(state, batch, key)
    results.append((jax.device_get(state.params),
                    jax.device_get(state.batch_stats),
                    float(metrics["loss"])))
  chex.assert_trees_all_close(results[0][0], results[1][0], atol=1e-5,
                              rtol=1e-4)
  chex.assert_trees_all_close(results[0][1], results[1][1], atol=1e-5,
                              rtol=1e-4)
  assert results[0][2] == pytest.approx(results[1][2], rel=1e-5)


def test_train_step_compiles_once(real_batch):
  mesh = sharding.make_mesh(1)
  state, train_step = _step_parts("fgsm_rs", mesh)
  batch = sharding.put_global_batch(real_batch, mesh)
  key = sharding.put_replicated(jax.random.key(1), mesh)
  for _ in range(3):
    state, _ = train_step(state, batch, key)
  assert train_step._cache_size() == 1


@pytest.mark.parametrize("objective", ["standard", "pgd_at", "trades", "mart",
                                       "fgsm_rs"])
def test_loop_end_to_end(objective, tmp_path):
  workdir = str(tmp_path / objective)
  report = train_and_evaluate(smoke_config(objective), workdir)
  assert report["steps"] == 6
  assert 0.0 <= report["test_clean_acc"] <= 1.0
  assert report["test_adv_acc"] <= report["test_clean_acc"]
  records = read_metrics(workdir)
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
  assert all(np.isfinite(r["train/loss"]) for r in records
             if "train/loss" in r)
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["objective"] == objective
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  restored = checkpoint.load(workdir)
  assert restored["step"] == 6
  assert restored["meta"]["model"]["name"] == "small_cnn"
  assert restored["params"]["head"]["dense"]["kernel"].shape[-1] == 10
  assert checkpoint.load(workdir, best=True)["step"] in (3, 6)


def test_resume_equals_uninterrupted_run(tmp_path):
  """Losing everything after the step-3 checkpoint and rerunning the same
  command ends with bit-identical parameters and optimizer state."""
  config = smoke_config("pgd_at")
  full = str(tmp_path / "full")
  train_and_evaluate(config, full)
  cut = str(tmp_path / "cut")
  shutil.copytree(full, cut)
  # As if killed right after the step-3 save: later files never existed.
  shutil.rmtree(os.path.join(cut, "checkpoints", "6"))
  shutil.rmtree(os.path.join(cut, "best"))
  os.remove(os.path.join(cut, "report.json"))
  train_and_evaluate(smoke_config("pgd_at"), cut)
  a = checkpoint.load(full, with_opt_state=True)
  b = checkpoint.load(cut, with_opt_state=True)
  chex.assert_trees_all_equal(a["params"], b["params"])
  chex.assert_trees_all_equal(a["batch_stats"], b["batch_stats"])
  chex.assert_trees_all_equal(a["opt_state"], b["opt_state"])
  strip = lambda rs: [{k: v for k, v in r.items()} for r in rs]  # noqa: E731
  assert strip(read_metrics(full)) == strip(read_metrics(cut))


def test_piecewise_schedule_matches_boundaries():
  cfg = ml_collections.ConfigDict(dict(
      lr=0.1, schedule="piecewise", boundaries=(0.5, 0.75), decay=0.1,
      warmup_steps=0))
  schedule = optimizer.make_schedule(cfg, 100)
  np.testing.assert_allclose(
      [schedule(0), schedule(49), schedule(50), schedule(75), schedule(99)],
      [0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-6)


def test_cyclic_schedule_peaks_and_returns_to_zero():
  cfg = ml_collections.ConfigDict(dict(lr=0.2, schedule="cyclic",
                                       peak_fraction=0.4))
  schedule = optimizer.make_schedule(cfg, 100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(40)) == pytest.approx(0.2)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_is_coupled_like_torch_sgd():
  """One SGD step with momentum and weight decay equals torch.optim.SGD's
  formula: v = g + wd * w; w -= lr * v."""
  cfg = ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01,
      schedule="constant"))
  tx, _ = optimizer.make_optimizer(cfg, 10)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.5])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * (grads["w"]
                                                   + 0.01 * params["w"]),
                             rtol=1e-6)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_parameters(tmp_path):
  """SIGKILL a real launch.py run mid-training (right after a checkpoint),
  start the same command again, and compare with an uninterrupted run."""
  import signal
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = ["--config=configs/at.py:pgd_at,smoke", "--config.num_steps=12",
          "--config.checkpoint.every_steps=2", "--config.progress_bar=false"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

  def launch(workdir, **kw):
    return subprocess.Popen([sys.executable, "launch.py", *args,
                             f"--workdir={workdir}"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)

  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  assert launch(full).wait(timeout=600) == 0
  proc = launch(killed)
  deadline = time.time() + 600
  while not os.path.isdir(os.path.join(killed, "checkpoints", "6")):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "report.json"))
  assert launch(killed).wait(timeout=600) == 0
  a = checkpoint.load(full, with_opt_state=True)
  b = checkpoint.load(killed, with_opt_state=True)
  assert a["step"] == b["step"] == 12
  chex.assert_trees_all_equal(a["params"], b["params"])
  chex.assert_trees_all_equal(a["opt_state"], b["opt_state"])
