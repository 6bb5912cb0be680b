"""The persistent compilation cache: a second process reads back what the
first compiled instead of compiling it again."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles one small ResNet input-gradient program (an attack's inner step)
# and reports the cache events JAX emitted while doing so.
_PROGRAM = r"""
import json, sys
if sys.argv[2] == "no-filelock":  # as if the package were not installed
  sys.modules["filelock"] = None
import jax, jax.numpy as jnp
from robustjax import compile_cache, models
compile_cache.enable(sys.argv[1], min_compile_time_s=0.0)
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
model = models.create_model("resnet18", width=0.125)
x = jnp.zeros((4, 32, 32, 3))
variables = model.init(jax.random.key(0), x, train=False)
grad = jax.jit(jax.grad(lambda x: model.apply(variables, x, train=False).sum()))
grad(x).block_until_ready()
print(json.dumps(sorted(set(e.rsplit("/", 1)[-1] for e in events
                            if "compilation_cache" in e))))
"""


def _run(cache_dir: str, filelock: str = "filelock") -> list[str]:
  out = subprocess.run([sys.executable, "-c", _PROGRAM, cache_dir, filelock],
                       capture_output=True, text=True, cwd=ROOT, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return json.loads(out.stdout.strip().splitlines()[-1])


# Without filelock (slow: the default run has filelock, requirements.txt)
# the cache still works, with no size limit.
@pytest.mark.parametrize("filelock", [
    "filelock", pytest.param("no-filelock", marks=pytest.mark.slow)])
def test_second_process_hits_the_cache(tmp_path, filelock):
  cache_dir = str(tmp_path / "xla")
  first = _run(cache_dir, filelock)
  assert "cache_misses" in first and "cache_hits" not in first
  assert os.listdir(cache_dir)  # entries written
  second = _run(cache_dir, filelock)
  assert "cache_hits" in second and "cache_misses" not in second
