"""Failures a user causes end with one line, exit code 2, no traceback and
the workdir unchanged; training survives SIGTERM/SIGINT, a second launch
into its workdir and a full disk during a save (docs/reliability.md)."""

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import chex
import pytest

from configs import at as at_config
from robustjax import checkpoint, tasks, workdir as workdir_lib
from robustjax.errors import EXIT_PREEMPTED, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/quickstart.py:smoke", "--config.progress_bar=false"]


def _env():
  path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
              PYTHONPATH=path)


def _launch(*args, timeout=300):
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT,
                        env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def _popen(*args):
  return subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _hashes(path):
  """{relative path: sha256} of every file under ``path``."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _one_error_line(result, message, code=2):
  """Exit ``code``, exactly one ``error:`` line holding ``message``, no
  traceback; returns the line."""
  assert result.returncode == code, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert message in errors[0], errors[0]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


def _smoke_config(**overrides):
  config = at_config.get_config("pgd_at,smoke")
  config.progress_bar = False
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished smoke run (checkpoints at steps 3 and 6), through the task
  dispatcher as launch.py runs it."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  tasks.run(_smoke_config(), workdir)
  return workdir


# --- one line, exit 2, nothing written ------------------------------------

CONFIG_FILES = {
    "syntax.py": "def get_config(:\n  pass\n",
    "no_get_config.py": "X = 1\n",
    "raises.py": "def get_config(arg=None):\n  return {}['lr']\n",
}


@pytest.mark.parametrize("args,message", [
    (["--config={dir}/syntax.py"], "syntax.py line 1: invalid syntax"),
    (["--config={dir}/no_get_config.py"], "defines no get_config"),
    (["--config={dir}/raises.py"], "raises.py line 2: get_config() raised "
     "KeyError"),
    (SMOKE + ["--config.optimizer.lrr=1"],
     "the config has no key 'lrr' (did you mean 'lr'?)"),
    (SMOKE + ["--cpu_devices=-3"], "-3 is not a non-negative integer"),
    (SMOKE + ["--workdir={dir}/a_file"], "is a file, not a folder"),
    (SMOKE + ["--workdir={dir}/a_file/run"], "is under the file"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
  for name, text in CONFIG_FILES.items():
    (tmp_path / name).write_text(text)
  (tmp_path / "a_file").write_text("not a folder\n")
  before = _hashes(tmp_path)
  args = [a.format(dir=tmp_path) for a in args]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp_path / 'run'}")
  line = _one_error_line(_launch(*args), message)
  assert "\\" not in line  # no escaped quotes or newlines
  assert _hashes(tmp_path) == before
  assert not (tmp_path / "run").exists()


def test_a_bug_shows_its_traceback_and_says_so(tmp_path):
  """An exception that is not a user error (here a task defined in the
  config file that raises RuntimeError) is a bug: traceback, a line saying
  so, exit code 1."""
  (tmp_path / "bug.py").write_text(
      "import ml_collections\n"
      "from robustjax import tasks\n\n"
      "@tasks.register('broken')\n"
      "def broken(config, workdir):\n"
      "  raise RuntimeError('an internal inconsistency')\n\n"
      "def get_config(arg=None):\n"
      "  return ml_collections.ConfigDict({'task': 'broken'})\n")
  result = _launch(f"--config={tmp_path / 'bug.py'}",
                   f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" in result.stderr
  assert "RuntimeError: an internal inconsistency" in result.stderr
  assert result.stderr.rstrip().splitlines()[-1].startswith(
      "error: the traceback above is a bug in robustjax")
  assert not (tmp_path / "run").exists()


def test_nan_loss_names_step_last_checkpoint_and_fix(trained, tmp_path):
  """Continuing the finished 6-step run to 12 steps at lr 1e6: the loss
  becomes non-finite; the line names the step, step 6 as the last good
  checkpoint and the learning rate; no checkpoint is added or changed."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  before = _hashes(os.path.join(workdir, "checkpoints"))
  result = _launch("--config=configs/at.py:pgd_at,smoke",
                   "--config.progress_bar=false", "--config.num_steps=12",
                   "--config.optimizer.lr=1e6", f"--workdir={workdir}")
  line = _one_error_line(result, "became non-finite (NaN or inf) at step ")
  assert int(line.split(" at step ")[1].split(";")[0]) > 6
  assert "the last good checkpoint is step 6" in line
  assert "--config.optimizer.lr=1e+06" in line
  assert _hashes(os.path.join(workdir, "checkpoints")) == before
  assert not os.path.exists(os.path.join(workdir, "lock.json"))


def _damage(workdir, how):
  folder = os.path.join(workdir, "checkpoints", "6")
  if how == "truncated":
    arrays = [os.path.join(r, f) for r, _, fs in
              os.walk(os.path.join(folder, "state")) for f in fs]
    largest = max(arrays, key=os.path.getsize)
    with open(largest, "r+b") as f:
      f.truncate(os.path.getsize(largest) // 10)
  else:
    with open(os.path.join(folder, "meta", "metadata"), "w") as f:
      f.write("{not json")


@pytest.mark.parametrize("how,message", [
    ("truncated", "its arrays ({ckpt}/state) cannot be read"),
    ("bad_json", "its metadata ({ckpt}/meta) cannot be read (JSONDecodeError"),
])
def test_damaged_checkpoint_names_file_and_fallback(trained, tmp_path, how,
                                                    message):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  _damage(workdir, how)
  before = _hashes(workdir)
  ckpt = os.path.join(workdir, "checkpoints", "6")
  result = _launch("--config=configs/evaluate.py:smoke",
                   f"--config.checkpoint_path={workdir}",
                   f"--workdir={tmp_path / 'eval'}")
  line = _one_error_line(result, message.format(ckpt=ckpt))
  assert (f"the other checkpoints in {workdir}/checkpoints load (steps 3): "
          "use one of them with --config.step=N") in line
  assert _hashes(workdir) == before
  assert not (tmp_path / "eval").exists()
  # The fallback the line names works.
  result = _launch("--config=configs/evaluate.py:smoke",
                   f"--config.checkpoint_path={workdir}", "--config.step=3",
                   f"--workdir={tmp_path / 'eval'}")
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("how", ["truncated", "bad_json"])
def test_resuming_from_a_damaged_checkpoint_says_how_to_fall_back(
    trained, tmp_path, how):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  _damage(workdir, how)
  before = _hashes(workdir)
  config = _smoke_config()
  config.num_steps = 12
  with pytest.raises(ConfigError) as err:
    tasks.run(config, workdir)
  message = str(err.value)
  assert message.startswith(f"checkpoint {workdir}/checkpoints/6 is damaged")
  assert message.endswith("load (steps 3): to resume from the newest of "
                          "them, move the damaged folder out of the way and "
                          "run the same command again")
  assert "\n" not in message
  assert _hashes(workdir) == before


def test_evaluate_refuses_a_training_workdir(trained):
  before = _hashes(trained)
  result = _launch("--config=configs/evaluate.py:smoke",
                   f"--config.checkpoint_path={trained}",
                   f"--workdir={trained}")
  line = _one_error_line(result, "holds the outputs of a 'train' run")
  assert f"--workdir={trained}/evaluate" in line
  assert _hashes(trained) == before


def test_tfds_without_data_or_network_fails_fast(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  from robustjax.data import tfds_source
  monkeypatch.setattr(tfds_source, "network_reachable", lambda: False)
  config = _smoke_config()
  config.dataset.update(source="tfds", data_dir=str(tmp_path / "tfds"))
  start = time.time()
  with pytest.raises(ConfigError, match="not prepared in .* and the network "
                     "is unreachable.*tfds build cifar10") as err:
    tasks.run(config, str(tmp_path / "run"))
  assert time.time() - start < 60
  assert "\n" not in str(err.value)
  assert not (tmp_path / "run").exists()


def test_tfds_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails
  config = _smoke_config()
  config.dataset.source = "tfds"
  with pytest.raises(ConfigError, match="pip install -r "
                     "requirements-tfds.txt"):
    tasks.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_network_probe_is_quick():
  from robustjax.data import tfds_source
  start = time.time()
  tfds_source.network_reachable()
  assert time.time() - start < 3 * tfds_source._PROBE_TIMEOUT_S + 1


# --- preemption -----------------------------------------------------------

def _wait_for_step(proc, workdir, step, timeout=300):
  """Waits until metrics.jsonl logs ``step`` (the run is past it)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    if os.path.exists(path):
      with open(path) as f:
        if any(json.loads(line)["step"] >= step for line in f
               if line.strip()):
          return
    time.sleep(0.05)
  raise AssertionError(f"step {step} not reached")


PREEMPT_ARGS = ["--config=configs/at.py:pgd_at,smoke",
                "--config.progress_bar=false", "--config.num_steps=14",
                "--config.checkpoint.every_steps=100"]


def test_sigterm_checkpoints_and_resume_equals_uninterrupted(tmp_path):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  assert _launch(*PREEMPT_ARGS, f"--workdir={full}").returncode == 0
  proc = _popen(*PREEMPT_ARGS, f"--workdir={cut}")
  _wait_for_step(proc, cut, 4)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
  assert "Traceback" not in err
  stopped = [line for line in err.splitlines() if line.startswith("preempted")]
  assert len(stopped) == 1, err[-3000:]
  step = int(stopped[0].split()[3].rstrip(";"))
  assert stopped[0] == (f"preempted at step {step}; run the same command to "
                        "resume")
  assert 4 <= step < 14
  # The checkpoint at that step is complete; the lock is released.
  assert checkpoint.load(cut)["step"] == step
  assert not os.path.exists(os.path.join(cut, "lock.json"))
  assert not os.path.exists(os.path.join(cut, "report.json"))
  assert _launch(*PREEMPT_ARGS, f"--workdir={cut}").returncode == 0
  a = checkpoint.load(full, with_opt_state=True)
  b = checkpoint.load(cut, with_opt_state=True)
  assert a["step"] == b["step"] == 14
  chex.assert_trees_all_equal(a["params"], b["params"])
  chex.assert_trees_all_equal(a["batch_stats"], b["batch_stats"])
  chex.assert_trees_all_equal(a["opt_state"], b["opt_state"])
  drop_time = lambda r: {k: v for k, v in r.items() if k != "wall_time_s"}  # noqa: E731
  reports = [json.loads((tmp_path / d / "report.json").read_text())
             for d in ("full", "cut")]
  assert drop_time(reports[0]) == dict(drop_time(reports[1]), workdir=full)
  metrics = [(tmp_path / d / "metrics.jsonl").read_text()
             for d in ("full", "cut")]
  assert metrics[0] == metrics[1]


def test_second_signal_stops_at_once(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _popen(*PREEMPT_ARGS, "--config.num_steps=200",
                f"--workdir={workdir}")
  _wait_for_step(proc, workdir, 2)
  # Two different signals: two of one kind could merge into one delivery.
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), \
      err[-3000:]
  assert "stopping at once" in err and "Traceback" not in err


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_multi_host_sigterm_stops_every_host_at_one_step(tmp_path):
  """Two ``--distributed`` processes; SIGTERM reaches process 1 only. JAX's
  preemption service makes both stop at the same step, after saving it."""
  workdir = str(tmp_path / "run")
  port = _free_port()
  logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "launch.py", *SMOKE, "--config.num_steps=300",
       "--config.checkpoint.every_steps=1000", f"--workdir={workdir}",
       "--distributed", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}", "--cpu_devices=2"],
      cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
      for i, log in enumerate(logs)]
  try:
    _wait_for_step(procs[0], workdir, 4)
    procs[1].send_signal(signal.SIGTERM)
    for proc in procs:
      proc.wait(timeout=300)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
  assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, outs[1][-3000:]
  lines = [[ln for ln in out.splitlines() if ln.startswith("preempted at")]
           for out in outs]
  assert len(lines[0]) == 1 and lines[0] == lines[1], outs
  step = int(lines[0][0].split()[3].rstrip(";"))
  assert 4 <= step < 300
  assert checkpoint.load(workdir)["step"] == step


# --- one run per workdir --------------------------------------------------

def test_second_launch_into_a_running_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  args = ["--config=configs/quickstart.py:smoke", "--config.num_steps=30",
          "--config.progress_bar=false", f"--workdir={workdir}"]
  first = _popen(*args)
  _wait_for_step(first, workdir, 2)
  with open(os.path.join(workdir, "lock.json")) as f:
    holder = json.load(f)
  before = _hashes(os.path.join(workdir, "checkpoints"))
  line = _one_error_line(_launch(*args), "is in use by another run")
  assert (f"host {socket.gethostname()}, pid {first.pid}, started "
          f"{holder['start']}, task train") in line
  assert "Traceback" not in line
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  assert checkpoint.load(workdir)["step"] == 30
  # The refused launch wrote nothing: every checkpoint the first run had
  # then is still there, as it was.
  after = _hashes(os.path.join(workdir, "checkpoints"))
  assert {k: after.get(k) for k in before} == before
  assert not os.path.exists(os.path.join(workdir, "lock.json"))


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  record = dict(host=socket.gethostname(), pid=os.getpid(), proc_start=None,
                task="train", start="2026-01-01T00:00:00+00:00")
  record.update(holder)
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), "w") as f:
    json.dump(record, f)


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  _write_lock(workdir, pid=_dead_pid())
  report = tasks.run(_smoke_config(), workdir)  # resumes at step 6: done
  assert report["steps"] == 6
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))


def test_lock_of_another_host_is_reported_with_how_to_clear_it(trained,
                                                               tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  _write_lock(workdir, host="node-17", pid=4242)
  before = _hashes(workdir)
  with pytest.raises(ConfigError, match="held by a run on another machine "
                     r"\(host node-17, pid 4242.*delete .*lock.json"):
    tasks.run(_smoke_config(), workdir)
  assert _hashes(workdir) == before


def test_live_lock_in_process_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lib.hold(workdir, "train"):
    with pytest.raises(ConfigError, match="is in use by another run"):
      with workdir_lib.hold(workdir, "train"):
        pass
  assert not os.path.exists(workdir)  # nothing written: nothing left


# --- a full disk during a save --------------------------------------------

def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path,
                                                               monkeypatch):
  """The metadata write of step 6's checkpoint fails with ENOSPC in orbax's
  background commit: the run stops with one line naming step 3 as intact,
  and step 3 loads, byte for byte as it was."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
  workdir = str(tmp_path / "run")
  original = jch.JsonCheckpointHandler._save_fn
  seen = {}

  async def full_disk(self, x, directory):
    if os.path.basename(os.path.dirname(str(directory))).startswith("6.") \
        and "checkpoints" in str(directory):
      seen["step3"] = _hashes(os.path.join(workdir, "checkpoints", "3"))
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                    str(directory))
    return await original(self, x, directory)

  monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", full_disk)
  with pytest.raises(ConfigError) as err:
    tasks.run(_smoke_config(), workdir)
  message = str(err.value)
  assert message.startswith("could not write the checkpoint of step 6 in ")
  assert "No space left on device" in message
  assert "the previous checkpoint (step 3) is intact" in message
  assert "\n" not in message
  monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", original)
  assert seen["step3"] == _hashes(os.path.join(workdir, "checkpoints", "3"))
  assert checkpoint.load(workdir)["step"] == 3
  assert not os.path.exists(os.path.join(workdir, "lock.json"))
  # Space freed, the same command resumes from step 3 and finishes.
  assert tasks.run(_smoke_config(), workdir)["steps"] == 6
  assert checkpoint.load(workdir)["step"] == 6


# --- slow: kills at random moments ----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_ten_random_stops_end_bit_identical(tmp_path, sig):
  """Ten stops at random moments of one run that saves every 2 steps (so
  some land during asynchronous saves, or during start-up and evaluation),
  each followed by the same command: the final state equals an
  uninterrupted run's bit for bit."""
  import random
  args = ["--config=configs/at.py:pgd_at,smoke", "--config.progress_bar=false",
          "--config.num_steps=40", "--config.checkpoint.every_steps=2"]
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  assert _launch(*args, f"--workdir={full}").returncode == 0
  rng = random.Random(int(sig))
  for _ in range(10):
    proc = _popen(*args, f"--workdir={cut}")
    time.sleep(rng.uniform(2.0, 12.0))
    if proc.poll() is None:
      proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    if sig == signal.SIGTERM:
      assert proc.returncode in (0, EXIT_PREEMPTED, -signal.SIGTERM), \
          err[-3000:]
  result = _launch(*args, f"--workdir={cut}")
  assert result.returncode == 0, result.stderr[-3000:]
  a = checkpoint.load(full, with_opt_state=True)
  b = checkpoint.load(cut, with_opt_state=True)
  assert a["step"] == b["step"] == 40
  chex.assert_trees_all_equal(a["params"], b["params"])
  chex.assert_trees_all_equal(a["opt_state"], b["opt_state"])
