"""Entry point: ``python launch.py --config=configs/NAME.py[:ARG] --workdir=DIR``.

Override any config field with ``--config.key=value`` (e.g.
``--config.optimizer.lr=0.05``). ``config.task`` picks what runs (``train``,
``evaluate``, ...); see ``robustjax/tasks/``. Bad input stops with one line on
stderr and exit code 2, before anything in the workdir is written.
"""

import os
import sys

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
    "cpu_devices", 0, "Split the host CPU into this many JAX devices and shard "
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cluster = {"coordinator_address": _COORDINATOR.value,
             "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
  given = [f"--{k}" for k, v in cluster.items() if v is not None]
  if given and not _DISTRIBUTED.value:
    print(f"error: {', '.join(given)} only apply with --distributed; add "
          "--distributed or drop them", file=sys.stderr)
    sys.exit(2)
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
  from robustjax.errors import ConfigError
  console.quiet_third_party_info()
  try:
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
  except ConfigError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  summary = {k: v for k, v in report.items() if k.endswith("acc")}
  print("report:", os.path.join(_WORKDIR.value, "report.json"), summary)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with one-line errors for bad config overrides."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    print(f"error: {err}\nusage: python launch.py --config=configs/NAME.py"
          "[:ARG] --workdir=DIR [--config.key=value ...]", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as err:
    # ml_collections raises these while applying --config.key=value.
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    detail = str(err).strip("\"' ")
    if isinstance(err, (AttributeError, KeyError)):
      detail = f"the config has no key {detail!r}"
    print(f"error: bad config override {' '.join(overrides)}: {detail}; "
          "the keys are listed in the config file", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
