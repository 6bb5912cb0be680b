"""Training: the loss goes down, every objective runs end to end through the
loop, resume reproduces an uninterrupted run bit for bit, and the 8-device
data-parallel step equals the single-device step."""

import json
import os
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny_models import objective_params

from configs import at as at_config
from robustjax import checkpoint, data, models, sharding
from robustjax.errors import ConfigError
from robustjax.models import layers
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
  obj_cfg = objective_params(objective, eps=8 / 255, step_size=2 / 255,
                             steps=2, beta=6.0, random_start=True)
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


# ---------------------------------------------------------------------------
# Fidelity to the reference scripts: BatchNorm statistics (checked against
# PyTorch running the reference's sequence of train-mode forward passes) and
# the recipes' learning-rate schedules, epoch by epoch.

BN_MOMENTUM_TORCH = 0.1  # PyTorch's default; flax's momentum 0.9 is 1 - this


class _TinyBNNet(nn.Module):
  """conv3x3-BN-ReLU twice, global average pool, dense: [B, H, W, 3] ->
  [B, 10]. Built from robustjax's own conv and BatchNorm layers, so the
  running-statistics rule under test is the models' one."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in (1, 2):
      x = layers.conv(4, 3, dtype=jnp.float32, name=f"conv{i}")(x)
      x = nn.relu(layers.batch_norm(train, dtype=jnp.float32,
                                    name=f"bn{i}")(x))
    return nn.Dense(10, name="dense")(jnp.mean(x, axis=(1, 2)))


def _torch_twin(variables):
  """The same network in PyTorch with the same weights and running stats."""
  import torch

  def conv(kernel):
    c = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1,
                        bias=False)
    c.weight.data = torch.from_numpy(np.transpose(np.asarray(kernel),
                                                  (3, 2, 0, 1)).copy())
    return c

  def bn(params, stats):
    b = torch.nn.BatchNorm2d(params["scale"].shape[0], eps=1e-5,
                             momentum=BN_MOMENTUM_TORCH)
    b.weight.data = torch.from_numpy(np.asarray(params["scale"]).copy())
    b.bias.data = torch.from_numpy(np.asarray(params["bias"]).copy())
    b.running_mean.data = torch.from_numpy(np.asarray(stats["mean"]).copy())
    b.running_var.data = torch.from_numpy(np.asarray(stats["var"]).copy())
    return b

  p, s = variables["params"], variables["batch_stats"]
  dense = torch.nn.Linear(4, 10)
  dense.weight.data = torch.from_numpy(np.asarray(p["dense"]["kernel"]).T
                                       .copy())
  dense.bias.data = torch.from_numpy(np.asarray(p["dense"]["bias"]).copy())
  return torch.nn.Sequential(
      conv(p["conv1"]["kernel"]), bn(p["bn1"], s["bn1"]), torch.nn.ReLU(),
      conv(p["conv2"]["kernel"]), bn(p["bn2"], s["bn2"]), torch.nn.ReLU(),
      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), dense)


def _tiny_net_with_stats(key):
  """The tiny net's variables, with non-trivial running statistics (so the
  test also sees how the starting statistics are carried)."""
  model = _TinyBNNet()
  variables = model.init(key, jnp.zeros((1, 8, 8, 3)), train=False)
  k_mean, k_var = jax.random.split(jax.random.fold_in(key, 1))
  stats = {name: {"mean": 0.3 * jax.random.normal(k_mean, s["mean"].shape),
                  "var": jax.random.uniform(k_var, s["var"].shape,
                                            minval=0.5, maxval=2.0)}
           for name, s in variables["batch_stats"].items()}
  return model, {"params": variables["params"], "batch_stats": stats}


def _assert_stats_match_torch(flax_stats, stats0, torch_net, passes: int,
                              n: int):
  """Running statistics equal PyTorch's after ``passes`` train-mode passes.

  Means compare directly. Variances: every pass updates
  ``r <- m r + (1 - m) v``, with v the biased batch variance in flax and the
  unbiased one, v * n / (n - 1) (n = B * H * W values per channel), in
  PyTorch. Unrolled, ``r = m^P r0 + sum of (1 - m) m^k v_k`` in both, so
  flax's value is ``m^P r0 + (n - 1) / n * (torch - m^P r0)``.
  """
  m_p = (1 - BN_MOMENTUM_TORCH) ** passes
  bns = [mod for mod in torch_net if mod.__class__.__name__ == "BatchNorm2d"]
  for name, bn in zip(("bn1", "bn2"), bns):
    np.testing.assert_allclose(flax_stats[name]["mean"],
                               bn.running_mean.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    r0 = np.asarray(stats0[name]["var"])
    expected = m_p * r0 + (n - 1) / n * (bn.running_var.detach().numpy()
                                         - m_p * r0)
    np.testing.assert_allclose(flax_stats[name]["var"], expected, rtol=1e-5,
                               atol=1e-6)


def test_trades_batchnorm_statistics_follow_the_reference_three_passes():
  """One TRADES loss leaves the running statistics of trades.py's three
  train-mode passes (natural, adversarial, natural again), and its loss and
  gradients equal the reference loss's, computed by PyTorch on the same
  weights and the same adversarial input."""
  import torch
  import torch.nn.functional as F

  model, variables = _tiny_net_with_stats(jax.random.key(0))
  b, beta = 16, 6.0
  x = jax.random.uniform(jax.random.key(1), (b, 8, 8, 3))
  y = jnp.arange(b) % 10
  obj = objectives.make_objective(objective_params("trades", eps=8 / 255,
                                                   step_size=2 / 255, steps=3,
                                                   beta=beta),
      model)
  x_adv = obj.attack(variables, x, y, jax.random.key(2))
  (loss, (stats, _)), grads = jax.value_and_grad(obj.loss, has_aux=True)(
      variables["params"], variables["batch_stats"], x, x_adv, y)

  net = _torch_twin(variables)
  net.train()
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
  xat = torch.from_numpy(np.array(x_adv)).permute(0, 3, 1, 2)
  yt = torch.from_numpy(np.array(y)).long()
  logits = net(xt)
  natural = F.cross_entropy(logits, yt)
  robust = torch.nn.KLDivLoss(reduction="sum")(
      F.log_softmax(net(xat), dim=1), F.softmax(net(xt), dim=1)) / b
  loss_t = natural + beta * robust
  loss_t.backward()

  _assert_stats_match_torch(stats, variables["batch_stats"], net, passes=3,
                            n=b * 8 * 8)
  assert float(loss) == pytest.approx(loss_t.item(), rel=1e-5)
  np.testing.assert_allclose(
      np.transpose(np.asarray(grads["conv2"]["kernel"]), (3, 2, 0, 1)),
      net[3].weight.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads["dense"]["kernel"].T,
                             net[8].weight.grad.numpy(), rtol=1e-4,
                             atol=1e-6)


def test_trades_replayed_third_pass_equals_a_real_third_pass():
  """The replayed update equals a third train-mode forward pass on the
  clean batch (small_cnn: four BatchNorm layers), and the clean share of the
  running statistics is the reference's 0.67."""
  model = models.create_model("small_cnn", num_classes=10, width=0.25)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  params, stats0 = variables["params"], variables["batch_stats"]
  x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  x_adv = jnp.clip(x + 8 / 255 * jnp.sign(
      jax.random.normal(jax.random.key(2), x.shape)), 0, 1)
  obj = objectives.make_objective(objective_params("trades", eps=8 / 255,
                                                   step_size=2 / 255, steps=1,
                                                   beta=6.0),
      model)
  _, (stats, _) = obj.loss(params, stats0, x, x_adv, jnp.zeros(8, jnp.int32))
  real = stats0
  for inputs in (x, x_adv, x):
    real = objectives._apply(model, params, real, inputs, True)[1]
  chex.assert_trees_all_close(stats, real, rtol=1e-5, atol=1e-6)
  # Weights of the three updates (flax momentum 0.9): x 0.081, x_adv 0.09,
  # x 0.1; clean share (0.081 + 0.1) / (1 - 0.9 ** 3).
  assert (0.081 + 0.1) / (1 - 0.9 ** 3) == pytest.approx(0.668, abs=1e-3)


def _reference_lr(base_lr: float, epoch: int) -> float:
  """adjust_learning_rate of train_trades_cifar10.py / MART's scripts, for
  the reference's epoch counted from 1."""
  if epoch >= 100:
    return base_lr * 0.001
  if epoch >= 90:
    return base_lr * 0.01
  if epoch >= 75:
    return base_lr * 0.1
  return base_lr


def _assert_schedule_matches_reference(config, base_lr: float,
                                       steps_per_epoch: int) -> None:
  """The config's schedule at the first and last step of every epoch k
  (counted from 0) equals the reference's lr for its epoch k + 1."""
  epochs = int(config.num_epochs)
  total = int(round(config.num_epochs * steps_per_epoch))
  schedule = optimizer.make_schedule(config.optimizer, total)
  got, want = [], []
  for k in range(epochs):
    for step in (k * steps_per_epoch, (k + 1) * steps_per_epoch - 1):
      got.append(float(schedule(step)))
      want.append(_reference_lr(base_lr, k + 1))
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("arg,epochs", [("trades", 76), ("trades,epochs=120",
                                                         120),
                                        ("trades,epochs=98", 98)])
def test_trades_schedule_matches_the_reference_epoch_by_epoch(arg, epochs):
  """train_trades_cifar10.py: lr 0.1, x0.1 from its epoch 75 (two final
  epochs at 0.01 in a 76-epoch run), x0.01 from 90 and x0.001 from 100 in
  longer runs; 390 steps per epoch as CIFAR-10 at batch 128 (98 epochs puts
  74/98 of the steps a float hair below an integer)."""
  config = at_config.get_config(arg)
  assert config.num_epochs == epochs
  _assert_schedule_matches_reference(config, 0.1, 390)
  assert config.optimizer.lr == 0.1 and config.optimizer.weight_decay == 2e-4
  schedule = optimizer.make_schedule(config.optimizer, 76 * 390)
  if epochs == 76:
    assert [float(schedule(k * 390)) for k in (73, 74, 75)] == pytest.approx(
        [0.1, 0.01, 0.01])


def test_mart_recipe_is_the_reference_resnet18_script():
  """YisenWang/MART train_resnet.py: lr 0.01 (x0.1 at its epochs 75, 90,
  100), wd 3.5e-3, 120 epochs, beta 5, eps 0.031, 10 steps of 0.007."""
  config = at_config.get_config("mart")
  assert config.objective.name == "mart"
  assert config.model.name == "resnet18"
  assert config.num_epochs == 120
  assert (config.optimizer.lr, config.optimizer.weight_decay,
          config.optimizer.momentum) == (0.01, 3.5e-3, 0.9)
  assert config.batch_size == 128
  attack = config.objective.attack
  assert (config.objective.beta, attack.eps, attack.step_size,
          attack.steps) == (5.0, 0.031, 0.007, 10)
  assert (attack.name, attack.loss, attack.start) == ("pgd", "ce", "normal")
  _assert_schedule_matches_reference(config, 0.01, 390)


def test_mart_wrn_recipe_is_the_reference_wideresnet_script():
  """train_wideresnet.py: WRN-34-10, lr 0.1, wd 7e-4, 90 epochs (x0.1 at its
  epoch 75, x0.01 for its last epoch, 90), beta 6."""
  config = at_config.get_config("mart_wrn")
  assert config.objective.name == "mart"
  assert config.model.name == "wrn34_10"
  assert config.num_epochs == 90
  assert (config.optimizer.lr, config.optimizer.weight_decay) == (0.1, 7e-4)
  assert (config.objective.beta, config.objective.attack.eps) == (6.0, 0.031)
  _assert_schedule_matches_reference(config, 0.1, 390)


def test_train_mode_attack_follows_robust_overfitting_train_cifar():
  """objective.attack_bn='train' for PGD-AT: one SGD step leaves the weights
  and running statistics of robust_overfitting's train_cifar.py (attack in
  train mode, K forward passes and the restart-selection pass, the training
  pass, then the clean pass after opt.step()), run by PyTorch from the
  same weights."""
  import torch
  import torch.nn.functional as F

  model, variables = _tiny_net_with_stats(jax.random.key(3))
  # Host copies: the step donates (deletes) the device buffers it is given.
  variables = jax.device_get(variables)
  b, steps, eps, alpha, lr, wd = 16, 3, 8 / 255, 2 / 255, 0.1, 5e-4
  images = np.asarray(jax.random.randint(jax.random.key(4), (b, 8, 8, 3), 0,
                                         256), np.uint8)
  labels = np.arange(b, dtype=np.int32) % 10
  obj = objectives.make_objective(objective_params("pgd_at", eps=eps,
                                                   step_size=alpha,
                                                   steps=steps,
                                                   random_start=False,
                                                   attack_bn="train"), model)
  tx, schedule = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      lr=lr, momentum=0.9, nesterov=False, weight_decay=wd,
      schedule="constant")), 10)
  mesh = sharding.make_mesh(1)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32),
                              params=variables["params"],
                              batch_stats=variables["batch_stats"],
                              opt_state=tx.init(variables["params"]))
  train_step = step_lib.make_train_step(obj, tx, schedule, mesh,
                                        augment=False)
  net = _torch_twin(variables)
  state, _ = train_step(sharding.put_replicated(state, mesh),
                        sharding.put_global_batch(
                            {"image": images, "label": labels}, mesh),
                        sharding.put_replicated(jax.random.key(5), mesh))

  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9,
                        weight_decay=wd)
  x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  y = torch.from_numpy(labels).long()
  delta = torch.zeros_like(x, requires_grad=True)  # random_start=False
  for _ in range(steps):
    F.cross_entropy(net(x + delta), y).backward()
    d = torch.clamp(delta + alpha * torch.sign(delta.grad), -eps, eps)
    delta.data = torch.max(torch.min(d, 1 - x), -x)
    delta.grad.zero_()
  net(x + delta)  # attack_pgd's restart-selection pass
  loss = F.cross_entropy(net(torch.clamp(x + delta.detach(), 0, 1)), y)
  opt.zero_grad()
  loss.backward()
  opt.step()
  net(x)  # the clean pass for the train accuracy, after the step

  _assert_stats_match_torch(jax.device_get(state.batch_stats),
                            variables["batch_stats"], net, passes=steps + 3,
                            n=b * 8 * 8)
  np.testing.assert_allclose(
      np.transpose(np.asarray(state.params["conv1"]["kernel"]), (3, 2, 0, 1)),
      net[0].weight.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_attack_bn_train_is_refused_where_the_reference_attacks_in_eval():
  for name in ("trades", "mart"):
    cfg = objective_params(name, eps=8 / 255, step_size=2 / 255, steps=2,
                           beta=6.0, attack_bn="train")
    with pytest.raises(ConfigError, match="attack_bn"):
      objectives.validate(cfg)
  with pytest.raises(ConfigError, match="attack_bn"):
    objectives.validate(objective_params("pgd_at", eps=8 / 255,
                                         step_size=2 / 255, steps=2,
                                         attack_bn="batch"))


@pytest.mark.parametrize("objective", ["pgd_at", "fgsm_rs"])
def test_train_mode_attack_step_is_finite_and_learns(objective, real_batch):
  mesh = sharding.make_mesh(1)
  model = models.create_model("small_cnn", num_classes=10, width=0.25)
  obj = objectives.make_objective(objective_params(objective, eps=8 / 255,
                                                   step_size=2 / 255, steps=2,
                                                   random_start=True,
                                                   attack_bn="train"), model)
  assert obj.attack_with_stats is not None
  assert (obj.after_update is not None) == (objective == "pgd_at")
  tx, schedule = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      lr=0.02, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="constant")), 100)
  state = sharding.put_replicated(
      step_lib.init_state(model, tx, jax.random.key(0), (32, 32, 3)), mesh)
  train_step = step_lib.make_train_step(obj, tx, schedule, mesh,
                                        augment=True)
  batch = sharding.put_global_batch(real_batch, mesh)
  key = sharding.put_replicated(jax.random.key(1), mesh)
  losses = []
  for _ in range(12):
    state, metrics = train_step(state, batch, key)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < losses[0], losses


def test_train_mode_attack_fsdp_step_equals_dp_step():
  """attack_bn='train' under fsdp (the clean pass after the step gathers the
  updated, sharded weights) gives the dp step's weights and statistics."""
  mesh = sharding.make_mesh(8)
  model = models.create_model("small_cnn", num_classes=10, width=0.5)
  obj = objectives.make_objective(objective_params("pgd_at", eps=8 / 255,
                                                   step_size=2 / 255, steps=1,
                                                   random_start=True,
                                                   attack_bn="train"), model)
  tx, schedule = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="constant")), 10)
  init = lambda k: step_lib.init_state(model, tx, k, (32, 32, 3))  # noqa: E731
  rng = np.random.default_rng(0)
  host_batch = {"image": rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
                "label": rng.integers(0, 10, 16).astype(np.int32)}
  final = {}
  for strategy in ("dp", "fsdp"):
    shardings = sharding.state_shardings(
        jax.eval_shape(init, jax.random.key(0)), mesh, strategy,
        min_size=256)
    if strategy == "fsdp":
      assert any(not s.is_fully_replicated
                 for s in jax.tree.leaves(shardings.params))
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    train_step = step_lib.make_train_step(obj, tx, schedule, mesh,
                                          augment=True,
                                          state_sharding=shardings)
    state, _ = train_step(state, sharding.put_global_batch(host_batch, mesh),
                          sharding.put_replicated(jax.random.key(1), mesh))
    final[strategy] = jax.device_get((state.params, state.batch_stats))
  chex.assert_trees_all_close(final["dp"], final["fsdp"], rtol=1e-4,
                              atol=1e-5)
