"""Tiny networks trained inside the tests, with a PyTorch twin.

``trained_tiny_cnn()`` trains a two-conv network on the embedded CIFAR-10 in
a few seconds (about 45-50% test accuracy, undefended) and caches it for the
process. ``torch_twin(params)`` builds the same network in PyTorch with the
same weights, for the agreement tests against torchattacks.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import data

PAD = ((1, 1), (1, 1))  # symmetric, as PyTorch's padding=1 (not Flax 'SAME')


class TinyCNN(nn.Module):
  """conv16/2 - conv32/2 - dense64 - dense10; x [B, 32, 32, 3] -> [B, 10].

  ``dtype`` is the compute dtype (parameters and logits stay float32), for
  the mixed-precision tests.
  """

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    dt = self.dtype
    x = nn.relu(nn.Conv(16, (3, 3), (2, 2), PAD, dtype=dt, name="conv1")(x))
    x = nn.relu(nn.Conv(32, (3, 3), (2, 2), PAD, dtype=dt, name="conv2")(x))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten order
    x = nn.relu(nn.Dense(64, dtype=dt, name="fc1")(x))
    return nn.Dense(10, dtype=dt, name="head")(x).astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def trained_tiny_cnn(steps: int = 600, seed: int = 0):
  """``(model, variables)`` after ``steps`` Adam steps of batch 128."""
  model = TinyCNN()
  train = data.load_split("cifar10", "train")
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
  tx = optax.adam(2e-3)
  opt_state = tx.init(variables)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(v):
      logits = model.apply(v, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(train), 128)
    variables, opt_state = step(variables, opt_state,
                                train.images[idx].astype(np.float32) / 255,
                                train.labels[idx])
  return model, jax.tree.map(np.asarray, variables)


def test_points(n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first ``n`` embedded CIFAR-10 test points: float [n, 32, 32, 3]."""
  test = data.load_split("cifar10", "test")
  return test.images[:n].astype(np.float32) / 255, test.labels[:n]


def torch_twin(variables):
  """The same network in PyTorch (NCHW inputs), with the same weights."""
  import torch  # local: test-only dependency

  p = variables["params"]

  class Twin(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(3, 16, 3, 2, 1)
      self.conv2 = torch.nn.Conv2d(16, 32, 3, 2, 1)
      self.fc1 = torch.nn.Linear(32 * 8 * 8, 64)
      self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
      x = torch.relu(self.conv1(x))
      x = torch.relu(self.conv2(x))
      x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as in Flax
      return self.head(torch.relu(self.fc1(x)))

  twin = Twin()
  with torch.no_grad():
    for name in ("conv1", "conv2"):
      getattr(twin, name).weight.copy_(torch.from_numpy(
          np.ascontiguousarray(p[name]["kernel"].transpose(3, 2, 0, 1))))
      getattr(twin, name).bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
    for name in ("fc1", "head"):
      getattr(twin, name).weight.copy_(torch.from_numpy(
          np.ascontiguousarray(p[name]["kernel"].T)))
      getattr(twin, name).bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
  return twin.eval()


def torchattacks_standard(twin, eps: float, n_classes: int = 10) -> list:
  """torchattacks' attacks configured as the original AutoAttack runs them.

  ``[(name, attack), ...]`` for APGD-CE, APGD-T, FAB-T and Square at Linf
  ``eps``: 100 iterations and 9 targets (torchattacks' ``AutoAttack`` class
  defaults to 10 iterations), Square with 5000 queries, p_init 0.8, the
  margin loss and no rescaled schedule (the original's settings).
  """
  import torchattacks  # local: test-only dependency
  return [
      ("apgd-ce", torchattacks.APGD(twin, norm="Linf", eps=eps, steps=100,
                                    n_restarts=1, loss="ce", seed=0)),
      ("apgd-t", torchattacks.APGDT(twin, norm="Linf", eps=eps, steps=100,
                                    n_restarts=1, n_classes=n_classes,
                                    seed=0)),
      ("fab-t", torchattacks.FAB(twin, norm="Linf", eps=eps, steps=100,
                                 n_restarts=1, multi_targeted=True,
                                 n_classes=n_classes, seed=0)),
      ("square", torchattacks.Square(twin, norm="Linf", eps=eps,
                                     n_queries=5000, n_restarts=1,
                                     p_init=0.8, loss="margin",
                                     resc_schedule=False, seed=0)),
  ]


def save_checkpoint(workdir, variables, spec: dict, step: int) -> str:
  """Writes ``variables`` as a robustjax checkpoint of model ``spec``.

  The layout ``launch.py`` tasks read (``WORKDIR/checkpoints/<step>``);
  returns ``workdir``.
  """
  import os  # local: only this helper needs it

  from robustjax import checkpoint
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 async_save=False)
  ckpt.save(step, {"params": variables["params"],
                   "batch_stats": variables["batch_stats"],
                   "step": np.int32(step)}, {"model": spec})
  ckpt.close()
  return workdir


def objective_params(name: str, *, eps: float = 8 / 255,
                     step_size: float = 2 / 255, steps: int = 2,
                     beta: float = 6.0, random_start: bool = True,
                     attack_bn: str = "eval") -> dict:
  """``make_objective``'s params for objective ``name`` with its reference
  attack at these budgets (``random_start=False``: start at x)."""
  from robustjax.training import objectives
  params = objectives.reference_params(name, eps=eps, step_size=step_size,
                                       steps=steps, beta=beta,
                                       attack_bn=attack_bn)
  if not random_start:
    params["attack"]["start"] = "zero"
  return params
