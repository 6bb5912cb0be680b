r"""Resolves the pinned requirement files for every supported (Python version,
platform) pair, without installing anything.

  python tools/check_requirements.py                 # all files, all pairs
  python tools/check_requirements.py --files requirements.txt --python 3.13

For each pair it runs pip's resolver against the package index as a machine
of that kind would (``pip install --dry-run --only-binary=:all: --platform
... --python-version ... --target TMP``): every pinned package and every
dependency must have a wheel for that platform and Python version. pip
evaluates environment markers (``; sys_platform == "darwin"``) for the
machine it runs on, not for ``--platform``, so this script runs pip with the
target's marker environment (``_PIP_FOR_TARGET``).

Needs the package index (it is not part of the test suite), a pip recent
enough for ``--dry-run --report`` (pip >= 23; checked with pip 26.3).
Dependencies published as source only (``SOURCE_ONLY``, pure Python) are
built into wheels first, since ``--platform`` accepts wheels only.

Prints one line per (file, Python, platform): ``ok`` with the number of
packages and the resolved versions of the main ones, or ``FAIL`` with pip's
reason; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHONS = ("3.11", "3.12", "3.13")


def _tags(template: str, versions: list[str]) -> list[str]:
  return [template.format(v) for v in versions]


# pip matches --platform tags exactly (it does not widen a manylinux tag to
# the older ones a machine also accepts), so each platform lists the tags of
# a current machine of its kind: glibc 2.17-2.35, macOS 11-14.
_GLIBC = ["2014"] + [f"_2_{minor}" for minor in range(17, 36)]
_MACOS = [f"{major}_0" for major in range(11, 15)]
# name: (pip --platform tags, the marker environment of such a machine).
PLATFORMS = {
    "linux-x86_64": (_tags("manylinux{}_x86_64", _GLIBC),
                     dict(sys_platform="linux", platform_system="Linux",
                          platform_machine="x86_64", os_name="posix")),
    "linux-aarch64": (_tags("manylinux{}_aarch64", _GLIBC),
                      dict(sys_platform="linux", platform_system="Linux",
                           platform_machine="aarch64", os_name="posix")),
    "macos-arm64": (_tags("macosx_{}_arm64", _MACOS),
                    dict(sys_platform="darwin", platform_system="Darwin",
                         platform_machine="arm64", os_name="posix")),
}
FILES = ("requirements.txt", "requirements-tfds.txt", "requirements-dev.txt")
# Dependencies published as source only (pure Python: pip builds a wheel for
# any platform on install). --platform forbids source packages, so the script
# builds their wheels here first and hands them to pip.
SOURCE_ONLY = ("promise",)  # of tensorflow-datasets
# Shown with their resolved versions in each ok line.
SHOWN = ("jax", "jaxlib", "numpy", "scipy", "tensorstore", "tensorflow",
         "tensorflow-cpu", "tensorflow-datasets", "torch")


# pip evaluates environment markers (``; sys_platform == "darwin"``, in the
# files and in every dependency's metadata) for the machine it runs on, not
# for --platform and --python-version; this runs pip with the marker
# environment of the target machine instead.
_PIP_FOR_TARGET = """
import json, sys
import pip._vendor.packaging.markers as markers
target = json.loads(sys.argv[1])
host = markers.default_environment
markers.default_environment = lambda: {**host(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def marker_environment(python: str, env: dict[str, str]) -> dict[str, str]:
  """The marker values of a CPython ``python`` machine described by ``env``."""
  return dict(env, python_version=python, python_full_version=f"{python}.0",
              implementation_name="cpython",
              platform_python_implementation="CPython")


def build_source_only(wheel_dir: str) -> None:
  """Wheels of ``SOURCE_ONLY`` in ``wheel_dir`` (py3-none-any)."""
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--disable-pip-version-check", "-w", wheel_dir,
                  *SOURCE_ONLY], check=True)


def resolve(req_file: str, python: str, platform_tags: list[str],
            env: dict[str, str], wheel_dir: str) -> tuple[bool, str]:
  """Runs pip's resolver for one target; (ok, summary line)."""
  with tempfile.TemporaryDirectory() as tmp:
    report = os.path.join(tmp, "report.json")
    cmd = [sys.executable, "-c", _PIP_FOR_TARGET,
           json.dumps(marker_environment(python, env)), "install", "--dry-run",
           "--ignore-installed", "--only-binary=:all:",
           *[f"--platform={tag}" for tag in platform_tags],
           "--python-version", python, "--target",
           os.path.join(tmp, "target"), "--quiet", "--report", report,
           "--disable-pip-version-check", "--find-links", wheel_dir,
           "-r", req_file]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      reason = [ln for ln in proc.stderr.splitlines()
                if ln.startswith("ERROR")] or proc.stderr.splitlines()[-1:]
      return False, " | ".join(reason)[:400]
    with open(report) as f:
      installed = {i["metadata"]["name"].lower().replace("_", "-"):
                   i["metadata"]["version"]
                   for i in json.load(f)["install"]}
  shown = " ".join(f"{n}=={installed[n]}" for n in SHOWN if n in installed)
  return True, f"{len(installed)} packages: {shown}"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--files", nargs="+", default=list(FILES))
  parser.add_argument("--python", nargs="+", default=list(PYTHONS))
  parser.add_argument("--platform", nargs="+", default=list(PLATFORMS),
                      choices=list(PLATFORMS))
  args = parser.parse_args()
  failed = 0
  wheel_dir = tempfile.mkdtemp(prefix="source-only-wheels-")
  build_source_only(wheel_dir)
  for name in args.files:
    for python in args.python:
      for platform in args.platform:
        tags, env = PLATFORMS[platform]
        ok, summary = resolve(os.path.join(ROOT, name), python, tags, env,
                              wheel_dir)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:24} py{python} "
              f"{platform:14} {summary}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
