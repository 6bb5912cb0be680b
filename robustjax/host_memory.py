"""Where XLA:CPU's large buffers get their memory: the process's allocator.

Every execution of a compiled XLA:CPU program allocates its temporary buffer
(hundreds of MB for a CIFAR attack step at batch 250 per device) and frees
it at the end. glibc's malloc serves every allocation above 32 MB with a
fresh ``mmap`` and returns it with ``munmap``, so each execution makes the
kernel fault in and zero-fill that memory again: 4.7 million page faults
and 8 s of system time in an 18 s APGD-CE run on 500 points on a 2-core
machine. Two remedies, both chosen when the process starts:

  ``tcmalloc``  gperftools' tcmalloc (``LD_PRELOAD``; Debian and Ubuntu
                package ``libtcmalloc-minimal4``) keeps freed memory and
                hands it out again: no zero-filling after the first use.
  ``hugetlb``   glibc 2.35+'s ``glibc.malloc.hugetlb=1`` tunable backs those
                mappings with transparent huge pages: one fault per 2 MiB
                instead of per 4 KiB, the zero-filling unchanged.

benchmarks/README.md ("Host memory") measures both against glibc's default
on whole ``launch.py`` runs. Results do not change (only where the buffers'
memory comes from does; tests/test_host_memory.py checks the bits).

``restart_with_allocator(mode)`` re-executes the process with the chosen
allocator in its environment, because the dynamic loader reads
``LD_PRELOAD`` and glibc its tunables once, when a process starts.
``launch.py`` calls it first thing (``--host_allocator``, default ``auto``:
tcmalloc where the system has it, else huge pages where glibc and the
kernel allow them, else nothing). It never restarts off Linux, nor when the
environment already names an allocator (``LD_PRELOAD`` or the tunable):
that choice is the user's.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys

MODES = ("auto", "tcmalloc", "hugetlb", "system")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
HUGETLB_SETTING = f"{HUGETLB_TUNABLE}=1"
# glibc 2.35 introduced the tunable; older releases ignore it.
MIN_GLIBC = (2, 35)
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
# tcmalloc reports every allocation above this many bytes on stderr (its
# default: 1 GiB); a large evaluation batch is not news.
TCMALLOC_REPORT = ("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))


class AllocatorError(RuntimeError):
  """The allocator asked for is not available on this system."""


def _glibc_version() -> tuple[int, ...] | None:
  name, version = platform.libc_ver()
  if name != "glibc" or not version:
    return None
  return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def _transparent_huge_pages_allowed() -> bool:
  """Whether the kernel gives huge pages to mappings that ask (``always``
  or ``madvise`` selected, not ``never``)."""
  try:
    with open(THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def find_tcmalloc() -> str | None:
  """The installed tcmalloc's library name (for ``LD_PRELOAD``), or None."""
  for name in TCMALLOC_LIBRARIES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def hugetlb_available() -> bool:
  """Whether glibc's huge-page tunable would take effect here."""
  glibc = _glibc_version()
  return (glibc is not None and glibc >= MIN_GLIBC
          and _transparent_huge_pages_allowed())


def _user_chose(environ) -> bool:
  tunables = environ.get("GLIBC_TUNABLES", "")
  return bool(environ.get("LD_PRELOAD")) or any(
      e.split("=", 1)[0] == HUGETLB_TUNABLE for e in tunables.split(":"))


def environment_for(mode: str, environ=os.environ) -> dict[str, str] | None:
  """The environment variables to restart with for ``mode``, or None when
  the process should go on as it is.

  Raises:
    AllocatorError: ``mode`` names an allocator this system lacks.
    ValueError: ``mode`` is not one of ``MODES``.
  """
  if mode not in MODES:
    raise ValueError(f"host allocator {mode!r} is not one of {MODES}")
  if mode == "system" or sys.platform != "linux" or _user_chose(environ):
    return None
  if mode in ("auto", "tcmalloc"):
    library = find_tcmalloc()
    if library is not None:
      return {"LD_PRELOAD": library,
              TCMALLOC_REPORT[0]: environ.get(*TCMALLOC_REPORT)}
    if mode == "tcmalloc":
      raise AllocatorError(
          "--host_allocator=tcmalloc: no tcmalloc library on this system; "
          "install it (Debian/Ubuntu: apt install libtcmalloc-minimal4) or "
          "pass --host_allocator=auto")
  if hugetlb_available():
    tunables = environ.get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": ":".join(
        [e for e in tunables.split(":") if e] + [HUGETLB_SETTING])}
  if mode == "hugetlb":
    raise AllocatorError(
        "--host_allocator=hugetlb needs glibc 2.35 or newer and transparent "
        "huge pages not set to 'never'; pass --host_allocator=auto")
  return None


def restart_with_allocator(mode: str = "auto") -> None:
  """Re-executes this process with the allocator ``mode`` picks.

  Returns only when no restart is needed (then the process goes on as it
  is). Call it first thing in a script's main, before JAX computes
  anything: the new process starts over from the same command line
  (``sys.orig_argv``) and environment, plus ``environment_for(mode)``,
  which also keeps it from restarting again.
  """
  changes = environment_for(mode)
  if changes is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.environ.update(changes)
  os.execv(sys.executable, sys.orig_argv)
