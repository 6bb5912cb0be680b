"""A run's hold on its workdir: one run at a time, and no task writing over
another task's outputs.

``hold(workdir, task)`` wraps every task ``launch.py`` runs
(``robustjax.tasks.run``):

- The path must be a folder or creatable as one (not a file, not under a
  file, writable).
- ``WORKDIR/task.json`` names the task whose outputs the workdir holds. A
  different task is refused, so that, say, evaluating into a training
  run's workdir cannot replace its ``report.json``. A workdir with outputs
  (``report.json``, ``checkpoints/``, ``metrics.jsonl``) but no
  ``task.json`` is accepted only by the tasks that resume
  (``adopt_unmarked``).
- ``WORKDIR/lock.json`` (host, pid, start time, task) exists while a run
  holds the workdir and is removed when it ends. A second launch stops with
  one line naming the holder. A lock whose process is gone on this host
  (a SIGKILLed run) is taken over; a lock of another host cannot be checked
  from here, so the message says how to clear it.

Nothing is left behind when the task refuses its input: a workdir this
call created and the task left empty is removed again. In a multi-process
run process 0 holds the workdir and every process learns its verdict.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
import tempfile
import time
from typing import Any, Iterator

from absl import logging

from robustjax.errors import ConfigError

LOCK_FILE = "lock.json"
TASK_FILE = "task.json"
# Files that show a workdir already holds some run's results.
_OUTPUTS = ("report.json", "checkpoints", "best", "metrics.jsonl")


def check_path(workdir: str) -> str:
  """The absolute path of ``workdir``; ``ConfigError`` unless it is a
  folder, or can be created as one, that this process can write in."""
  path = os.path.abspath(os.path.expanduser(workdir))
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"is under the file {existing}"
    raise ConfigError(f"--workdir={workdir} {where}, not a folder; pass a "
                      "folder path (it is created if missing)")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir}: cannot write in {existing} "
                      "(permission denied); pass a folder you can write to")
  return path


def _proc_start(pid: int) -> str | None:
  """The kernel's start time of process ``pid`` (Linux), which tells a live
  process from a later one that reused its pid; None where unavailable."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # Field 22, counted after the parenthesised command name.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict[str, Any]) -> bool:
  """Whether the process named by a lock of this host still runs."""
  pid = int(holder.get("pid", -1))
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  recorded = holder.get("proc_start")
  return recorded is None or _proc_start(pid) in (None, recorded)


def _read(path: str) -> dict[str, Any] | None:
  """The lock's holder; None once the file is gone. A writer creates the
  file before it fills it, so an unreadable file is read again briefly."""
  for _ in range(10):
    try:
      with open(path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      time.sleep(0.1)
  raise ConfigError(f"the workdir lock {path} is unreadable; if no run uses "
                    f"this workdir, delete it (rm {path}) and run again")


def _describe(holder: dict[str, Any]) -> str:
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, started "
          f"{holder.get('start')}, task {holder.get('task')}")


def _write_new(path: str, holder: dict[str, Any]) -> bool:
  """Creates ``path`` holding ``holder``; False if it already exists."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(holder, f)
    f.flush()
    os.fsync(f.fileno())
  return True


def _take_over(path: str, stale: dict[str, Any], holder: dict[str, Any]
               ) -> bool:
  """Replaces the stale lock ``stale`` with ``holder``. Two launches on one
  host may find the same stale lock: a host-local file lock lets one of
  them replace it and makes the other see the new holder."""
  import filelock  # local: only a stale lock needs it
  key = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:16]
  guard = os.path.join(tempfile.gettempdir(), f"robustjax-lock-{key}")
  with filelock.FileLock(guard, timeout=30):
    if _read(path) != stale:
      return False
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(holder, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  logging.warning("took over the workdir lock %s of a process that is gone "
                  "(%s)", path, _describe(stale))
  return True


def acquire(workdir: str, task: str) -> dict[str, Any]:
  """Takes ``WORKDIR/lock.json`` for this process; returns the holder record.

  Raises ConfigError naming the holder when a live run (or a run of another
  host) holds it.
  """
  path = os.path.join(workdir, LOCK_FILE)
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "proc_start": _proc_start(os.getpid()), "task": task,
        "start": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds")}
  for _ in range(5):
    if _write_new(path, me):
      return me
    holder = _read(path)
    if holder is None:
      continue  # released meanwhile
    if holder.get("host") != me["host"]:
      raise ConfigError(
          f"workdir {workdir} is held by a run on another machine "
          f"({_describe(holder)}); this host cannot check that process: if "
          f"that run is over, delete {path} and run again, else pass another "
          "--workdir")
    if _alive(holder):
      raise ConfigError(
          f"workdir {workdir} is in use by another run ({_describe(holder)});"
          " wait for it to end or pass another --workdir")
    if _take_over(path, holder, me):
      return me
  raise ConfigError(f"could not take the workdir lock {path}: other launches "
                    "keep taking it; start one run per workdir")


def release(workdir: str, holder: dict[str, Any]) -> None:
  """Removes ``WORKDIR/lock.json`` if ``holder`` still holds it."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    with open(path) as f:
      current = json.load(f)
  except (OSError, ValueError):
    return
  if current == holder:
    os.remove(path)


def check_owner(workdir: str, task: str, *, adopt_unmarked: bool) -> bool:
  """ConfigError if ``workdir`` holds another task's outputs; returns
  whether ``WORKDIR/task.json`` is still to be written."""
  marker = os.path.join(workdir, TASK_FILE)
  if os.path.exists(marker):
    try:
      with open(marker) as f:
        owner = str(json.load(f)["task"])
    except (OSError, ValueError, KeyError, TypeError):
      owner = "unknown"
    if owner != task:
      raise ConfigError(
          f"workdir {workdir} holds the outputs of a '{owner}' run "
          f"({TASK_FILE}); the '{task}' task would write over its "
          f"report.json: pass a new --workdir, e.g. "
          f"--workdir={os.path.join(workdir, task)}")
    return False
  found = [n for n in _OUTPUTS if os.path.exists(os.path.join(workdir, n))]
  if found and not adopt_unmarked:
    raise ConfigError(
        f"workdir {workdir} holds another run's outputs ({', '.join(found)});"
        f" the '{task}' task would write over them: pass a new --workdir, "
        f"e.g. --workdir={os.path.join(workdir, task)}")
  return True


def _agree(error: ConfigError | None) -> None:
  """Raises on every process when process 0 could not hold the workdir."""
  import jax  # local: the single-process path needs no device
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    failed = multihost_utils.broadcast_one_to_all(
        np.int32(error is not None))
    if int(failed) and error is None:
      error = ConfigError("process 0 could not hold the workdir (its error "
                          "line says why)")
  if error is not None:
    raise error


@contextlib.contextmanager
def hold(workdir: str, task: str, *, adopt_unmarked: bool = False
         ) -> Iterator[None]:
  """Holds ``workdir`` for ``task`` while the body runs (see the module
  docstring); ``adopt_unmarked``: accept a workdir with outputs but no
  ``task.json`` (tasks that resume from their workdir)."""
  import jax  # local: see _agree
  path = check_path(workdir)
  created = not os.path.exists(path)
  holder, mark, error = None, False, None
  if jax.process_index() == 0:
    try:
      if not created:
        mark = check_owner(path, task, adopt_unmarked=adopt_unmarked)
      else:
        mark = True
        os.makedirs(path, exist_ok=True)
      holder = acquire(path, task)
      if mark:
        with open(os.path.join(path, TASK_FILE), "w") as f:
          json.dump({"task": task}, f)
          f.write("\n")
    except ConfigError as err:
      error = err
  try:
    _agree(error)
    yield
  finally:
    if holder is not None:
      release(path, holder)
      # A run that wrote nothing leaves nothing: not even a marker or the
      # folder it created.
      if mark and os.listdir(path) == [TASK_FILE]:
        os.remove(os.path.join(path, TASK_FILE))
      if created and not os.listdir(path):
        os.rmdir(path)
