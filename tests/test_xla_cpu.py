"""robustjax.xla_cpu: XLA's own convolution kernels instead of YNNPACK.

Each case runs in a fresh process, because XLA reads XLA_FLAGS once, when
its backends start.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from robustjax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The gradient of a ResNet's train-mode loss with respect to its parameters
# and its input (forward, data- and weight-gradient convolutions), and how
# many compiled ops are YNNPACK fusions holding a convolution.
_PROGRAM = r"""
import json, re, sys
import jax, jax.numpy as jnp
from robustjax import models, xla_cpu
added = xla_cpu.use_xla_convolutions() if sys.argv[1] == "xla" else None
model = models.create_model("resnet18", width=0.125)
x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
variables = model.init(jax.random.key(0), x, train=False)
def loss(params, x):
  logits, _ = model.apply({"params": params,
                           "batch_stats": variables["batch_stats"]},
                          x, train=True, mutable=["batch_stats"])
  return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
hlo = grad.lower(variables["params"], x).compile().as_text()
# Computations by name; YNNPACK fusions are custom fusions that call one.
bodies = {block.split(" ", 1)[0].lstrip("%"): block
          for block in hlo.split("\n\n")}
ynn_bodies = set(re.findall(r"calls=%?([\w.\-]+)[^\n]*__ynn_fusion", hlo))
convs = {name: body.count(" convolution(") for name, body in bodies.items()}
ynn_convs = sum(n for name, n in convs.items() if name in ynn_bodies)
xla_convs = sum(n for name, n in convs.items() if name not in ynn_bodies)
gp, gx = grad(variables["params"], x)
print(json.dumps({"added": added, "ynn_convs": ynn_convs,
                  "xla_convs": xla_convs,
                  "grads": [a.ravel().tolist()
                            for a in jax.tree.leaves((gp, gx))]}))
"""


def _run(kernels: str, xla_flags: str = "") -> dict:
  # Not the test process's XLA_FLAGS: each case sets its own.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  out = subprocess.run([sys.executable, "-c", _PROGRAM, kernels],
                       capture_output=True, text=True, cwd=ROOT, check=True,
                       env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def both():
  return _run("ynnpack"), _run("xla")


def test_convolutions_leave_ynnpack(both):
  default, ours = both
  assert default["ynn_convs"] > 0  # XLA:CPU's default, else this test is moot
  assert ours["added"] is True
  assert ours["ynn_convs"] == 0 and ours["xla_convs"] > 0


def test_same_gradients_either_way(both):
  default, ours = both
  assert len(default["grads"]) == len(ours["grads"])
  for a, b in zip(default["grads"], ours["grads"]):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=0,
                               atol=1e-4 * max(np.abs(a).max(), 1e-6))


def test_users_choice_in_xla_flags_is_kept():
  mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  out = _run("xla", xla_flags=mine)
  assert out["added"] is False
  assert out["ynn_convs"] == 0  # the user's list has no convolutions either


def test_other_jaxlib_keeps_xla_defaults(monkeypatch):
  # An unknown XLA_FLAGS entry would abort a future jaxlib: not set there.
  monkeypatch.setattr(xla_cpu.jaxlib, "__version__", "0.11.0")
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  assert xla_cpu.use_xla_convolutions() is False
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_too_late_is_an_error(monkeypatch):
  jax.devices()  # this test process's backends are up
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(RuntimeError, match="before JAX's first computation"):
    xla_cpu.use_xla_convolutions()
