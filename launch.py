"""Entry point: ``python launch.py --config=configs/NAME.py[:ARG] --workdir=DIR``.

Override any config field with ``--config.key=value`` (e.g.
``--config.optimizer.lr=0.05``). ``config.task`` picks what runs (``train``,
``evaluate``, ...); see ``robustjax/tasks/``.

Exit codes: 0 done; 2 a failure the user causes or can fix, printed as one
``error:`` line on stderr (bad input stops before anything in the workdir is
written); 75 training was stopped by SIGTERM/SIGINT after writing a
checkpoint (run the same command to resume); 1 a bug in robustjax, printed
with its traceback and a line saying so.
"""

import errno
import importlib.util
import os
import re
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/quickstart.py or "
    "configs/at.py:trades,smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder: checkpoints, metrics.jsonl, report.json.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host "
    "runs on TPU pods / GPU clusters). Without the three flags below it "
    "auto-detects the cluster (Cloud TPU, Slurm, Open MPI, Kubernetes).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: host:port of process "
    "0's coordinator service, e.g. localhost:12345 (default: auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: how many processes take part "
    "(default: auto-detect).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index in "
    "[0, num_processes) (default: auto-detect).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, lower_bound=0, help="Split the host CPU into this many JAX devices and shard "
    "each batch over them (data parallelism across cores; on a CPU-only "
    "machine one device per core is usually fastest for CIFAR-sized models). "
    "0 keeps JAX's default of one CPU device. No effect on GPU/TPU devices.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Folder of JAX's persistent compilation cache: "
    "programs compiled by an earlier run are read back instead of compiled "
    "again (default ~/.cache/robustjax/xla; '' turns it off).")
_YNNPACK_CONVOLUTIONS = flags.DEFINE_bool(
    "ynnpack_convolutions", False, "Let XLA:CPU run convolutions with YNNPACK, "
    "its default. Without this flag robustjax has XLA:CPU use its own "
    "convolution kernels, faster for CIFAR networks on the CPUs measured "
    "(robustjax/xla_cpu.py). No effect on GPU/TPU.")
_HOST_ALLOCATOR = flags.DEFINE_enum(
    "host_allocator", "auto", ["auto", "tcmalloc", "hugetlb", "system"],
    "Where XLA:CPU's large per-execution buffers get their memory; on Linux "
    "the process restarts once with the choice in its environment "
    "(robustjax/host_memory.py). auto: tcmalloc if installed "
    "(libtcmalloc-minimal4), else glibc's huge pages "
    "(GLIBC_TUNABLES=glibc.malloc.hugetlb=1) where glibc 2.35+ allows, else "
    "as started. system: no restart. Results are the same bits either way; "
    "on 2 CPU cores tcmalloc took 11-21% off whole runs, huge pages 2-11% "
    "(benchmarks/README.md).")
flags.mark_flags_as_required(["config", "workdir"])


# Errors of the file system that the user fixes (space, quota, permissions),
# as opposed to a bug; reported as one line.
_USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                   errno.EPERM, errno.EIO, errno.ENOTDIR)


def _fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def main(argv: list[str]) -> None:
  from robustjax.errors import (EXIT_PREEMPTED, EXIT_USER_ERROR, ConfigError,
                                Preempted)
  try:
    _main(argv)
  except (ConfigError, app.UsageError) as err:
    _fail(str(err), EXIT_USER_ERROR)
  except Preempted as err:
    print(err, file=sys.stderr, flush=True)
    sys.exit(EXIT_PREEMPTED)
  except KeyboardInterrupt:
    _fail("interrupted (Ctrl-C) outside the training steps; run the same "
          "command to start again (training resumes from its last "
          "checkpoint)", 130)
  except OSError as err:
    if err.errno not in _USER_OS_ERRORS:
      _bug()
    _fail(f"cannot write or read {err.filename or 'a file'}: {err.strerror}; "
          "free disk space or fix the folder's permissions, then run the same "
          "command again", EXIT_USER_ERROR)
  except Exception:  # noqa: BLE001 - anything else is ours to fix
    _bug()


def _bug() -> None:
  traceback.print_exc()
  _fail("the traceback above is a bug in robustjax, not a problem with your "
        "input; please report it with the traceback and the command line", 1)


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cluster = {"coordinator_address": _COORDINATOR.value,
             "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
  given = [f"--{k}" for k, v in cluster.items() if v is not None]
  if given and not _DISTRIBUTED.value:
    _fail(f"{', '.join(given)} only apply with --distributed; add "
          "--distributed or drop them")
  from robustjax import host_memory
  from robustjax.errors import ConfigError
  try:  # returns when no restart is needed
    host_memory.restart_with_allocator(_HOST_ALLOCATOR.value)
  except host_memory.AllocatorError as err:
    raise ConfigError(str(err)) from err
  from robustjax import workdir as workdir_lib
  workdir_lib.check_path(_WORKDIR.value)
  import jax
  if not _YNNPACK_CONVOLUTIONS.value:
    from robustjax import xla_cpu
    xla_cpu.use_xla_convolutions()  # before jax starts its backends
  if _CPU_DEVICES.value > 0:  # must precede any use of a device
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  if _DISTRIBUTED.value:
    # CPU processes exchange collectives over gloo, jax 0.10's default
    # (jax_cpu_collectives_implementation), so nothing to set for CPU runs.
    jax.distributed.initialize(**cluster)
  from robustjax import compile_cache, console, tasks
  console.quiet_third_party_info()
  console.quiet_late_read_callbacks()
  if _COMPILATION_CACHE.value != "":
    try:
      compile_cache.enable(_COMPILATION_CACHE.value
                           or compile_cache.DEFAULT_DIR)
    except OSError as err:
      raise ConfigError(
          f"cannot use --compilation_cache={_COMPILATION_CACHE.value}: "
          f"{err.strerror}; pick a writable folder or pass "
          "--compilation_cache=''") from err
  try:
    config = _CONFIG.value
    config.get("task")  # the config file loads lazily: fail here, clearly
  except OSError as err:
    raise ConfigError(f"cannot load the config file: {str(err).splitlines()[-1].strip()}") from err
  report = tasks.run(config, _WORKDIR.value)
  summary = {k: v for k, v in report.items() if k.endswith("acc")}
  print("report:", os.path.join(_WORKDIR.value, "report.json"), summary)


def _config_file_problem(argv: list[str]) -> str | None:
  """Why the ``--config`` file itself cannot give a config (a syntax error,
  no ``get_config``, ``get_config`` raising), as one line; None when it can
  (or the file is missing, which ``main`` reports)."""
  values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  for i, a in enumerate(argv[1:-1], 1):
    if a == "--config":
      values.append(argv[i + 1])
  if not values:
    return None
  path, sep, arg = values[-1].partition(":")
  if not os.path.isfile(path):
    return None
  try:
    spec = importlib.util.spec_from_file_location("launch_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      return (f"the config file {path} defines no get_config(arg=None); a "
              "config file returns its ml_collections.ConfigDict from "
              "get_config (see configs/quickstart.py)")
    module.get_config(*([arg] if sep else []))
  except SyntaxError as err:
    return (f"the config file {path} line {err.lineno}: {err.msg} (Python "
            "syntax); fix the file")
  except Exception as err:  # noqa: BLE001 - any error of the user's file
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f" line {frames[-1].lineno}" if frames else ""
    detail = " ".join(str(err).split())[:300]
    call = f"get_config({arg!r})" if sep else "get_config()"
    return (f"the config file {path}{where}: {call} raised "
            f"{type(err).__name__}: {detail}; fix the file or its argument")
  return None


def _override_problem(err: Exception, argv: list[str]) -> str:
  """A failed ``--config.key=value`` as one line (ml_collections raises
  AttributeError/KeyError for unknown keys, with a "Did you mean" hint on a
  second line, and TypeError/ValueError for values of the wrong type)."""
  overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
  inner = err.args[0] if err.args and isinstance(err.args[0], Exception) \
      else err
  text = str(inner.args[0]) if inner.args else str(inner)
  if isinstance(inner, (AttributeError, KeyError)):
    key = re.match(r"""\s*(?:Key )?["']([^"']+)["']""", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    detail = (f"the config has no key '{key.group(1) if key else text}'"
              + (f" (did you mean '{hint.group(1)}'?)" if hint else ""))
  else:
    detail = " ".join(text.split()).strip("\"' ")
  return (f"bad config override {' '.join(overrides)}: {detail}; the keys are "
          "listed in the config file")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with one-line errors for bad config files and bad config
  overrides."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    print(f"error: {err}; usage: python launch.py --config=configs/NAME.py"
          "[:ARG] --workdir=DIR [--config.key=value ...]", file=sys.stderr)
  except Exception as err:  # noqa: BLE001 - sorted out below
    # ml_collections runs the config file while parsing, so its errors and
    # those of --config.key=value overrides both arrive here.
    problem = _config_file_problem(argv)
    if problem is None and not isinstance(
        err, (AttributeError, KeyError, TypeError, ValueError)):
      traceback.print_exc()
      problem = ("the traceback above is a bug in robustjax, not a problem "
                 "with your input; please report it")
      print(f"error: {problem}", file=sys.stderr)
      sys.exit(1)
    print(f"error: {problem or _override_problem(err, argv)}",
          file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
