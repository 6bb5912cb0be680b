"""The import_torch and export_torch tasks, through launch.py.

A small random-weight TRADES WideResNet (RobustBench's class, loaded by file
path) is saved as a .pt file the way released checkpoints are (weights under
``state_dict``, DataParallel's ``module.`` prefix, the unused
``sub_block1`` copy); import_torch turns it into a workdir that autoattack
and rift read, export_torch writes it back, and bad input stops with one
line and an empty workdir.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import export_torch as export_config
from configs import import_torch as import_config
from robustjax import checkpoint, tasks
from robustjax.errors import ConfigError

torch = pytest.importorskip("torch", reason="PyTorch is a test dependency "
                            "(requirements-dev.txt)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("import_torch")


def _launch(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def torch_wrn(tmp_path_factory):
  """(RobustBench WideResNet-10-1 in eval mode, path of its .pt file)."""
  from robustbench_reference import architecture_file, randomise
  torch.set_num_threads(1)
  module = architecture_file("wide_resnet")
  torch.manual_seed(0)
  model = module.WideResNet(depth=10, widen_factor=1, sub_block1=True)
  randomise(model, seed=1)
  path = tmp_path_factory.mktemp("torch") / "wrn10_1.pt"
  torch.save({"state_dict": {f"module.{k}": v
                             for k, v in model.state_dict().items()},
              "epoch": 100}, str(path))
  return model, module, str(path)


@pytest.fixture(scope="module")
def imported(torch_wrn, tmp_path_factory):
  _, _, path = torch_wrn
  workdir = tmp_path_factory.mktemp("imported") / "wrn"
  result = _launch("--config=configs/import_torch.py:arch=wide_resnet,"
                   "verify=64", f"--config.file={path}",
                   f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "verify: clean" in result.stderr and "as wide_resnet" in \
      result.stderr
  return workdir


def test_import_writes_a_checkpoint_of_the_same_network(torch_wrn, imported):
  model, _, _ = torch_wrn
  report = json.loads((imported / "report.json").read_text())
  assert report["num_examples"] == 64 and 0 <= report["clean_acc"] <= 1
  tree = checkpoint.load(str(imported))
  spec = tree["meta"]["model"]
  assert (spec["name"], spec["depth"], spec["widen"], spec["padding"]) == (
      "wrn", 10, 1, "torch")
  assert tree["meta"]["torch"]["sub_block1"] is True
  from robustjax import models
  x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(
      np.float32)
  ours = np.asarray(models.build_model(spec).apply(
      {"params": tree["params"], "batch_stats": tree["batch_stats"]}, x,
      train=False))
  with torch.no_grad():
    theirs = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(np.abs(theirs))


# Slow: the autoattack task's end-to-end test (tests/test_autoattack.py) runs
# by default; this one adds only that an imported workdir is accepted, which
# the RiFT test below also shows.
@pytest.mark.slow
def test_autoattack_on_the_import(imported, tmp_path):
  result = _launch("--config=configs/autoattack.py:smoke,n=16",
                   f"--config.checkpoint_path={imported}",
                   f"--workdir={tmp_path / 'aa'}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "aa" / "report.json").read_text())
  assert report["num_examples"] == 16
  assert 0 <= report["robust_acc"] <= report["clean_acc"] <= 1
  assert report["max_perturbation"] <= 8 / 255 + 1e-6


def test_rift_mrc_on_the_import(imported, tmp_path):
  """The import held out no training points: RiFT runs with the test-set
  selection of the reference (``paper``)."""
  result = _launch("--config=configs/rift.py:smoke,paper",
                   f"--config.checkpoint_path={imported}",
                   f"--workdir={tmp_path / 'rift'}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "rift" / "report.json").read_text())
  kernels = {row["module"] for row in report["mrc"]}
  assert "stage2/block0/conv1" in kernels and "head/dense" in kernels
  assert all(np.isfinite(row["mrc"]) for row in report["mrc"])
  assert report["module"] in kernels


def test_export_loads_strictly_and_gives_the_same_outputs(torch_wrn,
                                                          imported,
                                                          tmp_path):
  model, module, _ = torch_wrn
  out = tmp_path / "back.pt"
  config = export_config.get_config()
  config.checkpoint_path = str(imported)
  config.output = str(out)
  report = tasks.get("export_torch")(config, str(tmp_path / "export"))
  assert report["round_trip_exact"] and report["sub_block1"]
  fresh = module.WideResNet(depth=10, widen_factor=1, sub_block1=True)
  fresh.load_state_dict(torch.load(str(out), weights_only=True), strict=True)
  original = model.state_dict()
  for key, value in fresh.state_dict().items():
    if not key.startswith("sub_block1."):
      assert torch.equal(value, original[key]), key
  x = torch.rand(4, 3, 32, 32)
  with torch.no_grad():
    assert torch.equal(fresh.eval()(x), model(x))


def test_import_by_robustbench_name(tmp_path):
  """A RobustBench name gives the class and its options: DeepMind's
  pre-activation ResNet-18 with Swish, CIFAR-100 statistics inside."""
  from robustbench_reference import architecture_file, randomise
  dm = architecture_file("dm_wide_resnet")
  torch.manual_seed(0)
  model = dm.DMPreActResNet(num_classes=100, depth=18, width=0,
                            activation_fn=dm.Swish, mean=dm.CIFAR100_MEAN,
                            std=dm.CIFAR100_STD)
  randomise(model, seed=1)
  path = tmp_path / "r18.pt"
  torch.save(model.state_dict(), str(path))
  config = import_config.get_config(
      "robustbench=Rebuffi2021Fixing_R18_ddpm,dataset=cifar100")
  config.file = str(path)
  report = tasks.get("import_torch")(config, str(tmp_path / "w"))
  spec = checkpoint.load(str(tmp_path / "w"))["meta"]["model"]
  assert report["arch"] == "dm_preact_resnet18"
  assert (spec["num_classes"], spec["activation"], spec["shortcut"],
          spec["padding"]) == (100, "silu", "raw3x3", "same")
  np.testing.assert_allclose(spec["mean"], dm.CIFAR100_MEAN)


# --- bad input: one line, nothing written ------------------------------------


def _bad_files(tmp_path: pathlib.Path, good: str) -> dict[str, str]:
  blob = pathlib.Path(good).read_bytes()
  (tmp_path / "truncated.pt").write_bytes(blob[:len(blob) // 3])
  (tmp_path / "notes.pt").write_text("these are not weights\n")
  torch.save({"state_dict": torch.load(good, weights_only=True)[
      "state_dict"], "args": pathlib.PurePosixPath("x")},
      str(tmp_path / "pickled.pt"))
  return {name: str(tmp_path / name)
          for name in ("truncated.pt", "notes.pt", "pickled.pt")}


@pytest.mark.parametrize("case,message", [
    ("notes.pt", "is not a PyTorch checkpoint"),
    ("truncated.pt", "truncated or corrupt"),
    ("pickled.pt", "opt in with --config.allow_pickle=true"),
    ("dm_arch", "does not fit dm_wide_resnet"),
    ("unknown_arch", "unknown architecture 'wrn99'"),
    ("unknown_name", "unknown or unsupported RobustBench model"),
    ("both", "set exactly one of"),
    ("again", "already holds a checkpoint"),
])
def test_bad_input_is_one_line_and_writes_nothing(torch_wrn, tmp_path, case,
                                                  message):
  _, _, good = torch_wrn
  bad = _bad_files(tmp_path, good)
  config = import_config.get_config("arch=wide_resnet")
  config.file = bad.get(case, good)
  if case == "dm_arch":
    config.arch = "dm_wide_resnet"
  elif case == "unknown_arch":
    config.arch = "wrn99"
  elif case == "unknown_name":
    config.arch, config.robustbench = "", "Gowal2020Uncovering_70_61"
  elif case == "both":
    config.robustbench = "Gowal2020Uncovering_70_16"
  workdir = tmp_path / "workdir"
  if case == "again":
    tasks.get("import_torch")(config, str(workdir))
    before = sorted(p.name for p in workdir.rglob("*"))
  with pytest.raises(ConfigError) as err:
    tasks.get("import_torch")(config, str(workdir))
  assert message in str(err.value) and "\n" not in str(err.value)
  if case == "again":
    assert sorted(p.name for p in workdir.rglob("*")) == before
  else:
    assert not workdir.exists() or not any(workdir.iterdir())


def test_launch_exits_2_with_one_line(torch_wrn, tmp_path):
  _, _, good = torch_wrn
  workdir = tmp_path / "w"
  result = _launch("--config=configs/import_torch.py:arch=dm_wide_resnet",
                   f"--config.file={good}", f"--workdir={workdir}")
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and "does not fit dm_wide_resnet" in errors[0]
  assert "unexpected: conv1.weight, block1.layer.0.bn1.weight" in errors[0]
  assert not workdir.exists() or not any(workdir.iterdir())
