"""Agreement with the PyTorch reference (torchattacks 3.5.1) on shared weights.

A tiny CNN is trained on the embedded CIFAR-10 in JAX, copied into a PyTorch
twin (same logits to 1e-5), and attacked by robustjax and by torchattacks on
the same 200 test points at Linf 2/255 (where this undefended model keeps
about 20% robust accuracy, so the attacks have something to disagree on).
torchattacks is configured as the original AutoAttack runs its attacks (100
iterations, 9 targets, Square with 5000 queries and no rescaled schedule);
its own ``AutoAttack`` class defaults to 10 iterations.

Square is compared at Linf only: torchattacks' Square L2 query measures the
mass of the two squares over all channels at once, where fra31/auto-attack
measures it per channel, so the two L2 attacks differ by design.
``test_autoattack.py`` checks our L2 query against the reference's own
arithmetic instead.

PyTorch and torchattacks are test-only dependencies (requirements-dev.txt,
installed by ``make test``); the tests skip with a message without them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: run `make setup-dev` to "
    "install the reference-agreement dependencies")
torchattacks = pytest.importorskip(
    "torchattacks", reason="torchattacks is not installed: run `make "
    "setup-dev` (it is installed with --no-deps)")

import jax  # noqa: E402

from robustjax import sharding  # noqa: E402
from robustjax.attacks import apgd as apgd_lib  # noqa: E402
from robustjax.attacks import autoattack as aa  # noqa: E402
from robustjax.attacks import iterative as it  # noqa: E402

import tiny_models  # noqa: E402

pytestmark = pytest.mark.xdist_group("trained_tiny_cnn")

EPS = 2 / 255
N = 200


@pytest.fixture(scope="module")
def shared():
  torch.set_num_threads(1)
  model, variables = tiny_models.trained_tiny_cnn()
  x, y = tiny_models.test_points(N)
  twin = tiny_models.torch_twin(variables)
  return model, variables, x, y, twin


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_predict(twin, x_nchw):
  with torch.no_grad():
    return twin(x_nchw).argmax(1).numpy()


def test_twin_has_the_same_logits(shared):
  model, variables, x, _, twin = shared
  with torch.no_grad():
    theirs = twin(_nchw(x)).numpy()
  np.testing.assert_allclose(np.asarray(model.apply(variables, x)), theirs,
                             atol=1e-4)


@pytest.mark.parametrize("norm, eps, loss", [("linf", EPS, "ce"),
                                             ("l2", 0.15, "dlr")])
def test_apgd_follows_the_reference_trajectory(shared, monkeypatch, norm,
                                               eps, loss):
  """Same start point -> the same APGD run, step-size rule included.

  torch.rand (Linf) or torch.randn (L2) is patched to return robustjax's
  draw, so both implementations start from the same point; everything after
  is deterministic, and the two runs must break the same points with the
  same adversarial examples (up to float rounding along 100 steps).
  """
  model, variables, x, y, twin = shared
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(7),
                                                  np.arange(N))
  x_adv, robust = apgd_lib.apgd(lambda z: model.apply(variables, z), x, y,
                                key=keys, eps=eps, norm=norm, steps=100,
                                loss=loss)
  # The draw robustjax made for restart 0 (see apgd.init_state).
  keys0 = it.fold_in_each(keys, 0)
  if norm == "linf":
    t = np.asarray(jax.vmap(lambda k: jax.random.uniform(
        k, x.shape[1:], minval=-1.0, maxval=1.0))(keys0))
    draw, patched = (t + 1) / 2, "rand"   # torch: 2 * rand - 1
  else:
    draw = np.asarray(jax.vmap(lambda k: jax.random.normal(
        k, x.shape[1:]))(keys0))
    patched = "randn"
  # torchattacks attacks only the correctly classified points, so it draws
  # its start for exactly those rows.
  correct = np.asarray(model.apply(variables, x)).argmax(1) == y
  u = torch.from_numpy(np.ascontiguousarray(
      draw[correct].transpose(0, 3, 1, 2)))
  real = getattr(torch, patched)
  monkeypatch.setattr(torch, patched, lambda *a, **k: u.clone()
                      if tuple(a[0]) == tuple(u.shape) else real(*a, **k))
  ref = torchattacks.APGD(twin, norm="Linf" if norm == "linf" else "L2",
                          eps=eps, steps=100, n_restarts=1, loss=loss, seed=0)
  ref_adv = ref(_nchw(x[correct]), torch.from_numpy(y[correct]).long())
  ref_adv = ref_adv.detach().numpy()
  ref_robust = _torch_predict(twin, torch.from_numpy(ref_adv)) == y[correct]
  robust = np.asarray(robust)[correct]
  assert 0.05 < robust.mean() < 0.95  # the comparison is not vacuous
  agree = np.mean(ref_robust == robust)
  assert agree >= 0.99, (agree, robust.mean(), ref_robust.mean())
  # Where both broke a point, they found the same adversarial example, bar
  # a few whose paths drifted apart by float rounding: XLA's and oneDNN's
  # convolutions round differently, and 100 steps of DLR (a ratio of sorted
  # logits) amplify that. L2 / DLR with XLA's own convolution kernels: 32 of
  # 34 points within 1e-3, the other two 0.011 and 0.019 apart (with
  # YNNPACK's convolutions, all 34).
  both = ~ref_robust & ~robust
  ours = np.asarray(x_adv)[correct][both].transpose(0, 3, 1, 2)
  gap = np.abs(ours - ref_adv[both]).reshape(both.sum(), -1).max(1)
  assert np.median(gap) < 1e-5 and np.mean(gap < 1e-3) >= 0.9, (
      np.sort(gap)[-10:])


def _reference_cascade(twin, x, y):
  """torchattacks' attacks run as AutoAttack runs them; flags per stage."""
  attacks = tiny_models.torchattacks_standard(twin, EPS)
  xt, yt = _nchw(x), torch.from_numpy(y).long()
  robust = _torch_predict(twin, xt) == y
  stages = {}
  for name, attack in attacks:
    idx = np.flatnonzero(robust)
    if idx.size:
      adv = attack(xt[idx], yt[idx])
      robust[idx[_torch_predict(twin, adv) != y[idx]]] = False
    stages[name] = robust.copy()
  return stages


def test_standard_autoattack_agrees_with_torchattacks(shared):
  model, variables, x, y, twin = shared
  stages_ref = _reference_cascade(twin, x, y)
  stages = {}
  cfg = aa.config_for("standard", eps=EPS)
  robust_before = None
  result = aa.run_autoattack(
      lambda v, z, k: model.apply(v, z), variables, x, y, cfg,
      mesh=sharding.make_mesh(1), batch_size=N,
      on_attack=lambda row: stages.setdefault(row["attack"], row))
  del robust_before
  ours_final = result.robust
  ref_final = stages_ref["square"]
  assert abs(ours_final.mean() - ref_final.mean()) <= 0.01, (
      ours_final.mean(), ref_final.mean())
  assert np.mean(ours_final == ref_final) >= 0.95
  for name, row in stages.items():
    assert abs(row["robust_acc"] - stages_ref[name].mean()) <= 0.02, (
        name, row["robust_acc"], stages_ref[name].mean())
