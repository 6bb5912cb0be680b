"""robustjax.host_memory: the restart with another allocator.

The end-to-end cases run a child process, because the dynamic loader reads
LD_PRELOAD and glibc its tunables once, when a process starts.
"""

import os
import subprocess
import sys

import pytest

from robustjax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Counts its starts in the environment (kept across exec), restarts with the
# allocator named by argv[1] ("none": no call), then prints the starts, its
# LD_PRELOAD and GLIBC_TUNABLES and an attack's result on a fixed model, to
# the last bit.
_CHILD = r"""
import os, sys
os.environ["STARTS"] = str(int(os.environ.get("STARTS", "0")) + 1)
from robustjax import host_memory
if sys.argv[1] != "none":
  host_memory.restart_with_allocator(sys.argv[1])
import jax, jax.numpy as jnp
from robustjax.attacks import pgd
w = jax.random.normal(jax.random.key(0), (48, 10))
x = jax.random.uniform(jax.random.key(1), (64, 4, 4, 3))
y = jnp.arange(64) % 10
x_adv = pgd(lambda z: z.reshape(z.shape[0], -1) @ w, x, y,
            key=jax.random.key(2), eps=8 / 255, step_size=2 / 255, steps=10)
print(os.environ["STARTS"], os.environ.get("LD_PRELOAD", ""),
      os.environ.get("GLIBC_TUNABLES", ""),
      jax.numpy.asarray(x_adv).tobytes().hex()[:4096], sep="\n")
"""

def _run_child(mode: str, **environ: str) -> list[str]:
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
  env.update(environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.splitlines()


def _fake_system(monkeypatch, tmp_path, *, tcmalloc=None, glibc="2.36",
                 thp="always [madvise] never"):
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.setattr(host_memory, "find_tcmalloc", lambda: tcmalloc)
  monkeypatch.setattr(host_memory.platform, "libc_ver",
                      lambda: ("glibc", glibc) if glibc else ("", ""))
  path = tmp_path / "enabled"
  path.write_text(thp + "\n")
  monkeypatch.setattr(host_memory, "THP_SETTING", str(path))


def test_auto_prefers_tcmalloc_then_huge_pages(monkeypatch, tmp_path):
  _fake_system(monkeypatch, tmp_path, tcmalloc="libtcmalloc_minimal.so.4")
  env = host_memory.environment_for("auto", {})
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
  assert "GLIBC_TUNABLES" not in env
  _fake_system(monkeypatch, tmp_path)
  assert host_memory.environment_for("auto", {}) == {
      "GLIBC_TUNABLES": host_memory.HUGETLB_SETTING}
  # The user's other tunables are kept.
  assert host_memory.environment_for(
      "hugetlb", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
          "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:"
                            + host_memory.HUGETLB_SETTING}


def test_no_restart_where_it_cannot_help_or_the_user_chose(monkeypatch,
                                                          tmp_path):
  _fake_system(monkeypatch, tmp_path, tcmalloc="libtcmalloc_minimal.so.4")
  assert host_memory.environment_for("system", {}) is None
  assert host_memory.environment_for("auto", {"LD_PRELOAD": "x.so"}) is None
  assert host_memory.environment_for(
      "auto", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  monkeypatch.setattr(sys, "platform", "darwin")
  assert host_memory.environment_for("auto", {}) is None
  for glibc, thp in (("2.31", "always [madvise] never"),  # too old
                     ("", "always [madvise] never"),      # musl, for one
                     ("2.36", "always madvise [never]")):  # THP off
    _fake_system(monkeypatch, tmp_path, glibc=glibc, thp=thp)
    assert host_memory.environment_for("auto", {}) is None


def test_an_allocator_the_system_lacks_is_a_clear_error(monkeypatch,
                                                        tmp_path):
  _fake_system(monkeypatch, tmp_path, glibc="2.31")
  with pytest.raises(host_memory.AllocatorError, match="libtcmalloc"):
    host_memory.environment_for("tcmalloc", {})
  with pytest.raises(host_memory.AllocatorError, match="glibc 2.35"):
    host_memory.environment_for("hugetlb", {})
  with pytest.raises(ValueError, match="not one of"):
    host_memory.environment_for("jemalloc", {})


@pytest.mark.skipif(not host_memory.hugetlb_available(),
                    reason="no glibc >= 2.35 with transparent huge pages")
def test_restart_sets_the_tunable_once_and_changes_no_result():
  starts, preload, tunables, restarted = _run_child("hugetlb")
  assert (starts, preload, tunables) == ("2", "",
                                         host_memory.HUGETLB_SETTING)
  # Already set: no second restart.
  assert _run_child("hugetlb", GLIBC_TUNABLES=host_memory.HUGETLB_SETTING
                    )[0] == "1"
  starts, _, tunables, plain = _run_child("none")
  assert (starts, tunables) == ("1", "")
  assert restarted == plain  # the same attack, the same bits


@pytest.mark.skipif(host_memory.find_tcmalloc() is None,
                    reason="tcmalloc is not installed")
def test_restart_with_tcmalloc_changes_no_result():
  starts, preload, _, restarted = _run_child("tcmalloc")
  assert starts == "2" and preload == host_memory.find_tcmalloc()
  assert restarted == _run_child("none")[3]


def test_launch_reports_a_missing_allocator_in_one_line(tmp_path):
  if sys.platform != "linux" or (host_memory.find_tcmalloc()
                                 and host_memory.hugetlb_available()):
    pytest.skip("every allocator is available here")
  mode = "hugetlb" if host_memory.find_tcmalloc() else "tcmalloc"
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
  out = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/evaluate.py:smoke",
       f"--workdir={tmp_path / 'wd'}", f"--host_allocator={mode}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().startswith("error: --host_allocator=")
  assert len(out.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "wd").exists()
