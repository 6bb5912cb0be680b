"""The smoothing tasks: bad input stops with one line and writes nothing,
and each task runs end to end through launch.py (its ``:smoke`` variant)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoothing as smoothing_config
from robustjax import checkpoint, models, tasks
from robustjax.errors import ConfigError
from test_launch import _launch  # launch.py in a subprocess, on the CPU

# small_cnn's layers that feed the mixer (32x32 and 16x16).
LAYERS = "('bn2', 'bn4')"


def _save(path, name, seed, *, width=0.25, num_classes=10,
          dataset=None):
  """A checkpoint of a freshly initialised model (``dataset``: the meta's
  dataset block, as a training run writes it)."""
  model = models.create_model(name, width=width, num_classes=num_classes)
  variables = dict(model.init(jax.random.key(seed),
                              jnp.zeros((1, 32, 32, 3)), train=False))
  ckpt = checkpoint.Checkpointer(os.path.join(str(path), "checkpoints"),
                                 async_save=False)
  meta = {"model": {"name": name, "width": width,
                    "num_classes": num_classes}}
  if dataset is not None:
    meta["dataset"] = dataset
  ckpt.save(1, {"params": variables["params"],
                "batch_stats": variables["batch_stats"],
                "step": np.int32(1)}, meta)
  ckpt.close()
  return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp("smoothing")
  return {
      "std": _save(root / "std", "small_cnn", 0),
      "rob": _save(root / "rob", "small_cnn", 1),
      "c100": _save(root / "c100", "small_cnn", 2, num_classes=100),
      # Trained on 64x64 images (as its dataset block records).
      "big": _save(root / "big", "small_cnn", 3, dataset=dict(
          name="cifar10", image_shape=[64, 64, 3])),
      "wide": _save(root / "wide", "small_cnn", 4, width=0.5),
      "root": str(root),
  }


def _fixed(ckpts, **overrides):
  config = smoothing_config.get_config("smoke")
  config.checkpoint_std, config.checkpoint_rob = ckpts["std"], ckpts["rob"]
  config.num_devices = 1
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.mark.parametrize("overrides,message", [
    ({"alphas": (0.0, 1.5)}, "a=1.5 is outside [0, 1]"),
    ({"alphas": (-0.1,)}, "a=-0.1 is outside [0, 1]"),
    ({"checkpoint_rob": "c100"}, "checkpoint_std has 10 classes but "
     "checkpoint_rob has 100"),
    ({"checkpoint_rob": "big"}, "checkpoint_rob was trained on (64, 64, 3) "
     "images but dataset 'cifar10' has (32, 32, 3)"),
    ({"checkpoint_std": "/nonexistent/run"}, "no checkpoint found"),
    ({"rob_scale": 0.0}, "rob_scale=0.0 must be positive"),
    ({"transfer.attack.eps": 3.0}, "outside [0, 1]"),
])
def test_fixed_bad_input_writes_nothing(ckpts, tmp_path, overrides, message):
  overrides = {k: ckpts.get(v, v) if isinstance(v, str) else v
               for k, v in overrides.items()}
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as err:
    tasks.run(_fixed(ckpts, **overrides), str(workdir))
  assert message in str(err.value) and "\n" not in str(err.value)
  assert not workdir.exists()


def _train_config(ckpts, arg="train,smoke"):
  config = smoothing_config.get_config(arg)
  config.checkpoint_std, config.checkpoint_rob = ckpts["std"], ckpts["rob"]
  config.mixer.std_layers = config.mixer.rob_layers = ("bn2", "bn4")
  config.num_devices = 1
  return config


@pytest.mark.parametrize("overrides,message", [
    ({"mixer.std_layers": ("bn2", "stage9")}, "no top-level layer stage9"),
    ({"mixer.std_layers": ("bn2", "bn2")}, "differ in resolution"),
    ({"mixer.width": 0.0}, "mixer.width=0.0 must be positive"),
    ({"eval_constants.alpha_bias": 0.98}, "outside [0, 1]"),
    ({"attack.eps_factor": (1.1, 0.4)}, "eps_factor"),
    ({"checkpoint_rob": "c100"}, "has 100"),
])
def test_train_bad_input_writes_nothing(ckpts, tmp_path, overrides, message):
  config = _train_config(ckpts)
  for key, value in overrides.items():
    parent, _, leaf = key.rpartition(".")
    node = config[parent] if parent else config
    node[leaf] = ckpts.get(value, value) if isinstance(value, str) else value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as err:
    tasks.run(config, str(workdir))
  assert message in str(err.value) and "\n" not in str(err.value)
  assert not workdir.exists()


def test_fixed_task_through_launch(ckpts, tmp_path):
  workdir = tmp_path / "fixed"
  result = _launch("--config=configs/smoothing.py:smoke",
                   f"--config.checkpoint_std={ckpts['std']}",
                   f"--config.checkpoint_rob={ckpts['rob']}",
                   f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "report:" in result.stdout
  report = json.loads((workdir / "report.json").read_text())
  assert [p["alpha"] for p in report["curve"]] == [0.0, 0.9, 1.0]
  for point in report["curve"]:
    assert set(point["autoattack_by_attack"]) == {"apgd-ce", "apgd-t"}
    assert set(point["transfer_acc"]) == {"pgd2_std", "pgd2_rob"}
    # The worst case is no better than any single attack.
    assert point["robust_acc"] <= min(point["autoattack_acc"],
                                      *point["transfer_acc"].values())
    assert 0.0 <= point["certified_frac"] <= point["clean_acc"]
  # a = 0 is the standard model: nothing is certified.
  assert report["curve"][0]["certified_frac"] == 0.0
  lines = [line for line in result.stderr.splitlines() if "] a " in line]
  assert len(lines) == 3 and "worst" in lines[0], result.stderr[-2000:]
  # Bad input through the CLI: one line, exit 2, nothing written.
  bad = tmp_path / "bad"
  result = _launch("--config=configs/smoothing.py:smoke",
                   f"--config.checkpoint_std={ckpts['std']}",
                   f"--config.checkpoint_rob={ckpts['c100']}",
                   f"--workdir={bad}")
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
  assert "has 100" in errors[0] and not bad.exists()


def test_train_and_adaptive_tasks_through_launch(ckpts, tmp_path):
  mixer = tmp_path / "mixer"
  result = _launch("--config=configs/smoothing.py:train,smoke",
                   f"--config.checkpoint_std={ckpts['std']}",
                   f"--config.checkpoint_rob={ckpts['rob']}",
                   f"--config.mixer.std_layers={LAYERS}",
                   f"--config.mixer.rob_layers={LAYERS}",
                   f"--workdir={mixer}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((mixer / "report.json").read_text())
  assert len(report["history"]) == 2
  assert 0.96 <= report["alpha_min"] <= report["alpha_max"] <= 1.0

  out = tmp_path / "adaptive"
  result = _launch("--config=configs/smoothing.py:adaptive,smoke",
                   f"--config.mixer_path={mixer}", f"--workdir={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert set(report["autoattack_by_attack"]) == {"apgd-ce", "apgd-t"}
  assert report["robust_acc"] <= report["autoattack_acc"]
  assert report["certified_at_alpha"] == 0.96
  assert 0.96 <= report["alpha_min"] <= report["alpha_max"] <= 1.0

  # A mixer that does not fit the base models, and a checkpoint that is no
  # mixer: one line each, nothing written.
  config = smoothing_config.get_config("adaptive,smoke")
  config.mixer_path = str(mixer)
  config.checkpoint_std = config.checkpoint_rob = ckpts["wide"]
  with pytest.raises(ConfigError, match="does not fit these base models"):
    tasks.run(config, str(tmp_path / "bad1"))
  config = smoothing_config.get_config("adaptive,smoke")
  config.mixer_path = ckpts["std"]
  with pytest.raises(ConfigError, match="holds no mixing network"):
    tasks.run(config, str(tmp_path / "bad2"))
  assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()
