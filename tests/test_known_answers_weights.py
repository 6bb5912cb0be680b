"""Known answers for the weight-space formulas: RWS signatures, TIES, DARE,
interpolation, the loss barrier and RiFT's projection.

Each is recomputed in float64 numpy written from the reference's formula
(Robust_Weight_Signatures ``model_patching.py:decompose``, ties-merging's
trim / elect / disjoint mean, DARE's drop and rescale) on small random
trees, so a swapped argument, a wrong sign or a missing factor changes a
number these tests compare. Inputs avoid TIES's two tie cases (an exact
zero sign sum, ``density * n`` a whole number), where robustjax and the
reference's code differ (docs/weight_space.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import rift, rws
from robustjax.rws import batchnorm as rws_bn
from robustjax.weightspace import arithmetic, curves, interpolate


def _tree(rng, scale=1.0):
  """Three layers of a small network, numpy float32."""
  return {"conv1": {"kernel": (scale * rng.normal(size=(3, 3, 2, 4))
                               ).astype(np.float32),
                    "bias": (scale * rng.normal(size=4)).astype(np.float32)},
          "conv2": {"kernel": (scale * rng.normal(size=(3, 3, 4, 4))
                               ).astype(np.float32)},
          "head": {"kernel": (scale * rng.normal(size=(16, 3))
                              ).astype(np.float32)}}


@pytest.fixture(scope="module")
def family():
  rng = np.random.default_rng(0)
  pre = _tree(rng)
  move = lambda t, s: jax.tree.map(  # noqa: E731
      lambda v: (v + 0.1 * np.random.default_rng(s).normal(size=v.shape)
                 ).astype(np.float32), t)
  return pre, move(pre, 1), move(pre, 2), move(pre, 3)


def _decompose(pre, clean, robust):
  """model_patching.py's decompose, per tensor: the robust delta minus its
  projection on the clean delta."""
  d_c = robust.astype(np.float64) - pre
  d_s = clean.astype(np.float64) - pre
  return d_c - (np.sum(d_c * d_s) / np.sum(d_s * d_s)) * d_s


def test_rws_signature_is_the_robust_delta_orthogonal_to_the_clean(family):
  pre, clean, robust, _ = family
  sig = rws.extract(pre, clean, robust, first_k=2)
  assert sorted(sig.paths) == ["conv1/bias", "conv1/kernel", "conv2/kernel"]
  for layer, name in (("conv1", "kernel"), ("conv1", "bias"),
                      ("conv2", "kernel")):
    want = _decompose(pre[layer][name], clean[layer][name],
                      robust[layer][name])
    np.testing.assert_allclose(sig.tensors[f"{layer}/{name}"], want,
                               rtol=1e-5, atol=1e-7)


def test_rws_patch_and_the_reference_coefficients(family):
  """patch adds sum_i c_i v_i to the kept tensors only; the reference's
  --alpha a over K signatures is (a / K)^2 each, and reference_alpha
  inverts it (capped at 1)."""
  pre, clean, robust_a, robust_b = family
  sig_a = rws.extract(pre, clean, robust_a, first_k=2)
  sig_b = rws.extract(pre, clean, robust_b, first_k=2)
  target = jax.tree.map(lambda v: v + np.float32(0.5), pre)
  coefficients = rws.reference_coefficients(1.2, 2)
  np.testing.assert_allclose(coefficients, [0.36, 0.36])
  np.testing.assert_allclose(rws_bn.reference_alpha(coefficients), 1.0)
  np.testing.assert_allclose(rws_bn.reference_alpha([0.04, 0.09]), 0.5)
  np.testing.assert_allclose(rws_bn.reference_alpha([-0.04]), 0.2)
  out = rws.patch(target, [sig_a, sig_b], [0.3, -0.7])
  for path in sig_a.paths:
    layer, name = path.split("/")
    want = (target[layer][name].astype(np.float64)
            + 0.3 * _decompose(pre[layer][name], clean[layer][name],
                               robust_a[layer][name])
            - 0.7 * _decompose(pre[layer][name], clean[layer][name],
                               robust_b[layer][name]))
    np.testing.assert_allclose(out[layer][name], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["head"]["kernel"],
                                target["head"]["kernel"])
  for bits in (None, 4):
    sig = rws.extract(pre, clean, robust_a, first_k=2, bits=bits)
    scaled = rws.scale(sig, -2.5)
    np.testing.assert_allclose(scaled.tensors["conv1/kernel"],
                               -2.5 * sig.tensors["conv1/kernel"], rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_rws_quantization_levels(bits):
  """Uniform quantization over the tensor's own range: 2**bits levels from
  min to max, each value to its nearest level."""
  x = np.random.default_rng(4).normal(size=(5, 7))
  codes, low, step = rws.quantize(x, bits)
  levels = 2 ** bits - 1
  assert low == x.min() and np.isclose(step, (x.max() - x.min()) / levels)
  np.testing.assert_array_equal(codes, np.rint((x - x.min()) / step))
  assert codes.min() == 0 and codes.max() == levels
  back = rws.dequantize(codes, low, step, np.float64)
  np.testing.assert_allclose(back, x.min() + step * codes)
  assert np.max(np.abs(back - x)) <= step / 2 + 1e-12


def _ties_reference(deltas, density):
  """ties-merging on the deltas flattened into one vector each: keep the
  top int(n * density) + 1 magnitudes per delta (kthvalue, then >=), elect
  the sign of the sum (a zero sum takes the majority sign), average the
  kept entries that agree with it."""
  m = np.stack(deltas)
  n = m.shape[1]
  kth = np.sort(np.abs(m), 1)[:, n - int(n * density) - 1][:, None]
  m = np.where(np.abs(m) >= kth, m, 0.0)
  sign = np.sign(m.sum(0))
  sign[sign == 0] = np.sign(sign.sum())
  keep = np.where(sign > 0, m > 0, m < 0)
  selected = m * keep
  return selected.sum(0) / np.maximum((selected != 0).sum(0), 1)


@pytest.mark.parametrize("n,density", [(37, 0.3), (40, 0.25)])
def test_ties_merge_equals_the_reference_on_random_deltas(n, density):
  rng = np.random.default_rng(5)
  # 40 * 0.25 is a whole number: the kthvalue rule keeps one entry more.
  deltas = [rng.normal(size=n) for _ in range(3)]
  # Two entries whose trimmed deltas cancel exactly: the majority sign.
  big = np.argsort(-np.abs(deltas[0]))[:2]
  deltas[1][big] = -deltas[0][big]
  deltas[2][big] = 0.0
  deltas = [d.astype(np.float32).astype(np.float64) for d in deltas]
  trees_ = [{"a": {"w": jnp.float32(d[:20])}, "b": {"w": jnp.float32(d[20:])}}
            for d in deltas]
  merged = arithmetic.ties_merge(trees_, density=density)
  want = _ties_reference(deltas, density)
  got = np.concatenate([np.asarray(merged["a"]["w"]),
                        np.asarray(merged["b"]["w"])])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert np.count_nonzero(want) > 5 and np.all(want[big] != 0)
  # Applied to a base with a coefficient: base + lam * merged.
  base = {"a": {"w": jnp.ones(20)}, "b": {"w": jnp.ones(n - 20)}}
  applied = arithmetic.apply(base, merged, 1.5)
  np.testing.assert_allclose(
      np.concatenate([applied["a"]["w"], applied["b"]["w"]]),
      1.0 + 1.5 * want, rtol=1e-6)


def test_dare_keeps_each_entry_divided_by_one_minus_p():
  delta = {"w": jnp.float32(np.random.default_rng(6).normal(size=50_000))}
  for p in (0.3, 0.7):
    out = np.asarray(arithmetic.dare(delta, p=p, key=jax.random.key(1))["w"])
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.02, (p, kept.mean())
    np.testing.assert_allclose(out[kept], np.asarray(delta["w"])[kept]
                               / (1 - p), rtol=1e-6)
    plain = np.asarray(arithmetic.dare(delta, p=p, key=jax.random.key(1),
                                       rescale=False)["w"])
    np.testing.assert_array_equal(plain[kept], np.asarray(delta["w"])[kept])
    np.testing.assert_array_equal(plain[~kept], 0.0)


def test_interpolation_is_the_convex_combination_per_layer():
  rng = np.random.default_rng(7)
  a, b = _tree(rng), _tree(rng)
  out = interpolate.interpolate(a, b, 0.3)
  for layer in a:
    for name in a[layer]:
      np.testing.assert_allclose(
          out[layer][name], 0.7 * a[layer][name].astype(np.float64)
          + 0.3 * b[layer][name], rtol=1e-5, atol=1e-6)
  per_layer = interpolate.interpolate(a, b, {"conv*": 0.25, "*": 0.9})
  np.testing.assert_allclose(per_layer["conv2"]["kernel"],
                             0.75 * a["conv2"]["kernel"].astype(np.float64)
                             + 0.25 * b["conv2"]["kernel"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(per_layer["head"]["kernel"],
                             0.1 * a["head"]["kernel"].astype(np.float64)
                             + 0.9 * b["head"]["kernel"], rtol=1e-5,
                             atol=1e-6)


def test_loss_barrier_on_a_random_curve():
  """Both definitions against their formulas: max_t L(t) - (L0 + L1) / 2,
  and max_t [L(t) - ((1 - t) L0 + t L1)], the maximum over t in [0, 1]
  (a point outside, an extrapolation, is ignored)."""
  rng = np.random.default_rng(8)
  t = np.array([-0.2, 0.0, 0.1, 0.35, 0.5, 0.8, 1.0, 1.3])
  loss = rng.uniform(0.5, 3.0, t.size)
  loss[0] = loss[-1] = 10.0  # the extrapolated points are the highest
  out = curves.loss_barrier(t, loss)
  inside = (t >= 0) & (t <= 1)
  l0, l1 = loss[1], loss[6]
  np.testing.assert_allclose(out["barrier"],
                             loss[inside].max() - (l0 + l1) / 2)
  np.testing.assert_allclose(
      out["barrier_linear"],
      np.max(loss[inside] - ((1 - t[inside]) * l0 + t[inside] * l1)))
  assert out["argmax_alpha"] == t[inside][np.argmax(loss[inside])]


def test_rift_projection_onto_the_relative_frobenius_ball():
  """RiFT's MRC constraint ||delta||_F <= eps ||W||_F: a delta outside is
  rescaled onto the sphere, one inside is unchanged."""
  rng = np.random.default_rng(9)
  w = rng.normal(size=(3, 3, 4, 8))
  delta = rng.normal(size=w.shape)
  limit = 0.1 * np.sqrt(np.sum(w ** 2))
  got = np.asarray(rift.project(jnp.float32(delta), jnp.float32(w), 0.1))
  np.testing.assert_allclose(got, delta * limit / np.sqrt(np.sum(delta ** 2)),
                             rtol=1e-5)
  inside = 0.5 * delta * limit / np.sqrt(np.sum(delta ** 2))
  np.testing.assert_allclose(
      np.asarray(rift.project(jnp.float32(inside), jnp.float32(w), 0.1)),
      inside, rtol=1e-6)


def test_rift_mrc_on_a_linear_model():
  """MRC of a linear classifier against the reference loop in numpy: each
  epoch 4 steps of gradient ascent (lr 1) on the mean CE of shuffled
  quarters of the set, then delta projected onto ||delta||_F <= eps ||W||_F
  and the whole set's CE evaluated; MRC = the largest epoch loss (here not
  the last one) minus the unperturbed loss. The shuffle is the product's
  (its documented seed), the maths is transcribed."""
  import flax.linen as nn

  class Head(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      del train
      return nn.Dense(3, use_bias=False, name="head")(
          x.reshape((x.shape[0], -1)))

  rng = np.random.default_rng(11)
  images = rng.uniform(0, 1, (8, 2, 2, 1)).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  w0 = rng.normal(0, 1, (4, 3)).astype(np.float32)
  eps, epochs, steps = 0.3, 4, 4
  table = rift.mrc(Head().apply, {"params": {"head": {"kernel": w0}}},
                   images, labels, epsilon=eps, epochs=epochs, lr=1.0,
                   steps_per_epoch=steps, seed=0)

  x = images.reshape(8, -1).astype(np.float64)
  onehot = np.eye(3)[labels]

  def ce(w, rows=slice(None)):
    z = x[rows] @ w
    z = z - z.max(1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(1))
                   - z[np.arange(len(z)), labels[rows]])

  def grad(w, rows):
    z = x[rows] @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return x[rows].T @ (p - onehot[rows]) / len(rows)

  order = np.random.default_rng([0, 0])  # mrc's shuffle of module 0
  delta = np.zeros_like(w0, np.float64)
  limit = eps * np.sqrt(np.sum(w0.astype(np.float64) ** 2))
  losses, binding = [], 0
  for _ in range(epochs):
    for rows in np.array_split(order.permutation(8), steps):
      delta = delta + grad(w0 + delta, rows)
    norm = np.sqrt(np.sum(delta ** 2))
    binding += norm > limit
    delta = delta * min(1.0, limit / norm)
    losses.append(ce(w0 + delta))
  base = ce(w0)
  # The inputs exercise what the test pins: the ball binds, and the worst
  # epoch is not the last.
  assert binding and int(np.argmax(losses)) != epochs - 1
  (record,) = table
  assert record["module"] == "head"
  np.testing.assert_allclose(record["loss"], base, rtol=1e-5)
  np.testing.assert_allclose(record["worst_loss"], max(losses), rtol=1e-5)
  np.testing.assert_allclose(record["mrc"], max(losses) - base, rtol=1e-4,
                             atol=1e-6)
  assert record["worst_epoch"] == int(np.argmax(losses)) + 1


def test_rift_states_interpolation_is_robust_to_finetuned():
  """(1 - alpha) robust + alpha fine-tuned, params and statistics alike."""
  rng = np.random.default_rng(11)
  robust = {"params": _tree(rng), "batch_stats": {"bn": {
      "mean": rng.normal(size=4).astype(np.float32)}}}
  tuned = {"params": _tree(rng), "batch_stats": {"bn": {
      "mean": rng.normal(size=4).astype(np.float32)}}}
  out = rift.interpolate_states(robust, tuned, 0.25)
  np.testing.assert_allclose(
      out["params"]["conv2"]["kernel"],
      0.75 * robust["params"]["conv2"]["kernel"].astype(np.float64)
      + 0.25 * tuned["params"]["conv2"]["kernel"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      out["batch_stats"]["bn"]["mean"],
      0.75 * robust["batch_stats"]["bn"]["mean"].astype(np.float64)
      + 0.25 * tuned["batch_stats"]["bn"]["mean"], rtol=1e-5, atol=1e-6)
