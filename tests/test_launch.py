"""launch.py and the tasks: configs load, bad input stops with one line and
nothing written, and the evaluate task agrees with the training report."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from configs import at as at_config
from configs import evaluate as evaluate_config
from robustjax import checkpoint, tasks
from robustjax.errors import ConfigError
from robustjax.training.loop import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(objective="pgd_at"):
  config = at_config.get_config(f"{objective},smoke")
  config.progress_bar = False
  return config


@pytest.mark.parametrize("name,arg", [
    ("quickstart", None), ("quickstart", "smoke"), ("at", "pgd_at"),
    ("at", "trades"), ("at", "mart"), ("at", "mart_wrn"), ("at", "fgsm_rs"), ("at", "standard"),
    ("at", "trades,smoke,model=wrn34_10")])
def test_training_configs_validate(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  validate(config)
  assert config.task == "train"
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert "launch.py --config=configs/" in doc


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run") / "smoke")
  report = tasks.run(_smoke("pgd_at"), workdir)
  return workdir, report


def _listing(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      out[full] = os.path.getmtime(full)
  return out


@pytest.mark.parametrize("override,message", [
    ({"model.name": "resnet19"}, "unknown model 'resnet19'"),
    ({"dataset.name": "imagenet"}, "unknown dataset"),
    ({"objective.name": "free_at"}, "unknown objective 'free_at'"),
    ({"task": "distill"}, "unknown task 'distill'"),
    ({"objective.attack.eps": 8.0}, "outside [0, 1]"),
    ({"eval.attack.eps": -0.1}, "outside [0, 1]"),
    ({"dataset.data_dir": "/nonexistent/cifar"}, "/nonexistent/cifar"),
])
def test_bad_config_stops_before_writing(override, message, tmp_path):
  config = _smoke()
  for key, value in override.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match=None) as err:
    tasks.run(config, workdir)
  assert message in str(err.value)
  assert "\n" not in str(err.value)
  assert not os.path.exists(workdir)


def test_workdir_of_another_model_is_refused(trained_workdir):
  workdir, _ = trained_workdir
  before = _listing(workdir)
  config = _smoke()
  config.model.update(name="resnet18", width=0.125)
  with pytest.raises(ConfigError, match="holds a checkpoint of model"):
    tasks.run(config, workdir)
  assert _listing(workdir) == before


def _evaluate_like_final_eval(workdir, train_report, out_dir):
  """The evaluate task on the loop's final-evaluation points and attack
  (smoke: first 64 test points, PGD-3); asserts the same accuracies."""
  config = evaluate_config.get_config("steps=3,n=64")
  config.checkpoint_path = workdir
  config.eval.batch_size = 32
  report = tasks.run(config, str(out_dir))
  assert report["clean_acc"] == train_report["test_clean_acc"]
  assert report["adv_acc"] == train_report["test_adv_acc"]
  return report


def test_evaluate_task_matches_training_report(trained_workdir, tmp_path):
  workdir, train_report = trained_workdir
  report = _evaluate_like_final_eval(workdir, train_report, tmp_path / "eval")
  assert report["attack"] == "pgd3" and report["num_examples"] == 64
  assert os.path.exists(tmp_path / "eval" / "report.json")


def test_evaluate_uses_the_class_subset_the_model_was_trained_on(tmp_path):
  train = _smoke("standard")
  train.dataset.classes = "3-5"
  workdir = str(tmp_path / "subset")
  train_report = tasks.run(train, workdir)
  assert checkpoint.load(workdir)["meta"]["model"]["num_classes"] == 3
  # The same 64 points of classes 3-5 (relabelled 0-2) as the loop's final
  # evaluation: without the checkpoint's classes it would refuse to run.
  _evaluate_like_final_eval(workdir, train_report, tmp_path / "eval")


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
  config = evaluate_config.get_config("smoke")
  config.checkpoint_path = str(tmp_path / "empty")
  with pytest.raises(ConfigError, match="no checkpoint found"):
    tasks.run(config, str(tmp_path / "eval"))


def test_checkpoint_load_gives_readable_numpy_tree(trained_workdir):
  tree = checkpoint.load(trained_workdir[0])
  assert set(tree) == {"params", "batch_stats", "step", "meta"}
  assert tree["params"]["conv1"]["kernel"].shape[:2] == (3, 3)
  assert "bn1" in tree["batch_stats"]


def _launch(*args, cwd=ROOT):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--config=configs/quickstart.py:smoke", "--config.no_such_key=1"],
     "the config has no key 'no_such_key'"),
    (["--config=configs/quickstart.py:smoke", "--config.model.name=vit9"],
     "unknown model 'vit9'"),
    (["--config=configs/missing.py"], "cannot load the config file"),
    (["--config=configs/quickstart.py:smoke",
      "--compilation_cache=/proc/no_such_dir"],
     "cannot use --compilation_cache=/proc/no_such_dir"),
    (["--config=configs/quickstart.py:smoke", "--num_processes=2"],
     "--num_processes only apply with --distributed"),
])
def test_launch_bad_input_is_one_line_and_nonzero(args, message, tmp_path):
  workdir = str(tmp_path / "run")
  result = _launch(*args, f"--workdir={workdir}")
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(workdir)


def test_launch_smoke_run_on_two_cpu_devices(tmp_path):
  """The README's command shape, end to end through the CLI: the host split
  into 2 CPU devices, a report and a loadable checkpoint at the end."""
  workdir = tmp_path / "run"
  cache = tmp_path / "xla_cache"
  result = _launch("--config=configs/quickstart.py:smoke", "--cpu_devices=2",
                   "--config.progress_bar=false", f"--workdir={workdir}",
                   f"--compilation_cache={cache}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "report:" in result.stdout and "test_adv_acc" in result.stdout
  assert any(cache.iterdir())  # the compiled steps were cached
  assert (workdir / "report.json").exists()
  assert checkpoint.load(str(workdir))["step"] == 6


def test_launch_evaluates_with_apgd_ce(trained_workdir, tmp_path):
  """evaluate with another registered attack, through the CLI: APGD-CE's
  accuracy equals the one the evaluate task computes in-process, and the
  report names the attack and its parameters."""
  workdir, _ = trained_workdir
  out = tmp_path / "apgd"
  result = _launch("--config=configs/evaluate.py:attack=apgd-ce,steps=4,n=32",
                   f"--config.checkpoint_path={workdir}",
                   "--config.eval.batch_size=32", "--config.num_devices=1",
                   f"--workdir={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["attack"] == "apgd-ce4" and report["num_examples"] == 32
  assert report["attack_config"]["name"] == "apgd-ce"
  assert report["attack_config"]["rho"] == 0.75
  config = evaluate_config.get_config("attack=apgd-ce,steps=4,n=32")
  config.checkpoint_path = workdir
  config.eval.batch_size, config.num_devices = 32, 1
  again = tasks.run(config, str(tmp_path / "again"))
  assert (again["clean_acc"], again["adv_acc"]) == (
      report["clean_acc"], report["adv_acc"])
  assert report["adv_acc"] <= report["clean_acc"]
