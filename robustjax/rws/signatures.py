"""Robust weight signatures (Cai, Zhang, Wang, ICML 2023): extract and patch.

A signature stores what training on one corruption added to a network that
clean training did not. With three models fine-tuned from one start
``theta_pre`` (a clean one, ``theta_std``, and one trained on corruption c,
``theta_c``), tensor by tensor (flattened):

  delta_c = theta_c - theta_pre            the robust task vector
  delta_s = theta_std - theta_pre          the clean task vector
  v_c     = delta_c - (<delta_c, delta_s> / ||delta_s||^2) delta_s

``v_c`` is the part of the robust delta orthogonal to the clean delta
(VITA-Group/Robust_Weight_Signatures ``model_patching.py:decompose``). Only
the first ``k`` layers are kept (the reference's ``keep_num``; shallow layers
carry the difference), optionally quantized uniformly over each tensor's own
range. A signature is added to any model with the same shapes in those
layers (``patch``), removed again (``unpatch``), scaled, and several are
summed (``compose``).

Deviations from the reference code (see docs/rws.md):

* Coefficients are linear: ``patch(params, [s1, s2], [a1, a2])`` adds
  ``a1 * v1 + a2 * v2``. The reference multiplies the robust delta by its
  weight before projecting and again afterwards, so its effective
  coefficient is the weight squared (``--alpha a`` with K signatures gives
  ``(a / K) ** 2`` each); ``reference_coefficients`` reproduces that.
* Quantization is per signature and per tensor, with ``bits`` (levels =
  2**bits). The reference quantizes the stack of all signatures applied
  together with one min/max, with a level count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from robustjax.errors import ConfigError
from robustjax.weightspace import trees

MAX_BITS = 32


# ------------------------------------------------------------ projection

def project_out(delta: np.ndarray, direction: np.ndarray) -> np.ndarray:
  """``delta`` minus its projection on ``direction`` (any equal shapes).

  Computed in float64 so the result's inner product with ``direction`` is
  zero to float32 rounding; returned as ``delta``'s dtype. A zero
  ``direction`` (a layer clean training did not move) removes nothing.
  """
  d = np.asarray(delta, np.float64)
  s = np.asarray(direction, np.float64)
  if d.shape != s.shape:
    raise ConfigError(f"cannot project a {d.shape} delta on a {s.shape} "
                      "direction; use deltas of the same model")
  norm2 = float(np.vdot(s, s))
  if norm2 == 0.0:
    return np.asarray(delta).copy()
  return (d - (float(np.vdot(d, s)) / norm2) * s).astype(
      np.asarray(delta).dtype)


# ---------------------------------------------------------- quantization

def check_bits(bits: int | None) -> int | None:
  """``bits`` as an int in 1..32, or None (no quantization)."""
  if bits is None or bits == 0:
    return None
  if isinstance(bits, bool) or int(bits) != bits or not 1 <= int(bits) <= \
      MAX_BITS:
    raise ConfigError(f"bits={bits!r} must be an integer from 1 to "
                      f"{MAX_BITS} (or 0 / None for no quantization)")
  return int(bits)


def quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
  """Uniform quantization of ``x`` over its own range ``[min, max]``.

  Returns ``(codes, low, step)``: uint32 codes of ``x``'s shape in
  ``0 .. 2**bits - 1`` and the dequantization ``low + step * code``. The
  error is at most ``step / 2`` per entry (``step = (max - min) /
  (2**bits - 1)``); a constant tensor has ``step = 0`` and no error.
  """
  bits = check_bits(bits)
  if bits is None:
    raise ConfigError("quantize needs bits from 1 to 32")
  x64 = np.asarray(x, np.float64)
  low = float(x64.min()) if x64.size else 0.0
  high = float(x64.max()) if x64.size else 0.0
  levels = (1 << bits) - 1
  step = (high - low) / levels
  if step == 0.0:
    return np.zeros(x64.shape, np.uint32), low, 0.0
  codes = np.clip(np.rint((x64 - low) / step), 0, levels)
  return codes.astype(np.uint32), low, step


def dequantize(codes: np.ndarray, low: float, step: float,
               dtype: Any = np.float32) -> np.ndarray:
  """``low + step * codes`` as ``dtype`` (the inverse of ``quantize`` up to
  half a level)."""
  return (low + step * np.asarray(codes, np.float64)).astype(dtype)


# -------------------------------------------------------------- signature

@dataclasses.dataclass
class Signature:
  """One corruption's signature: a sparse set of float tensors.

  Attributes:
    tensors: ``{leaf path: float32 array}`` of the kept layers, in depth
      order (e.g. ``features/conv1/kernel`` of shape [3, 3, 3, C]); for a
      quantized signature these are the dequantized values.
    bits: the quantization bits (None = stored as float32).
    quant: ``{path: (low, step)}`` per tensor when quantized, else ``{}``;
      ``codes`` holds the matching uint32 codes.
    codes: ``{path: uint32 array}`` when quantized, else ``{}``.
    meta: provenance (JSON-able): ``corruption``, ``theta_pre``, ``clean``,
      ``robust``, ``model``, ``layers`` ... whatever the caller records.
  """
  tensors: dict[str, np.ndarray]
  bits: int | None = None
  quant: dict[str, tuple[float, float]] = dataclasses.field(
      default_factory=dict)
  codes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def paths(self) -> list[str]:
    return list(self.tensors)

  @property
  def num_params(self) -> int:
    return int(sum(v.size for v in self.tensors.values()))

  def storage_bits(self) -> int:
    """Bits of payload: ``bits`` per entry (32 unquantized) plus two
    float64 (low, step) per quantized tensor."""
    per = self.bits or 32
    return self.num_params * per + (128 * len(self.quant) if self.bits else 0)

  def name(self) -> str:
    return str(self.meta.get("corruption", "signature"))


def _floats_only(flat: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in flat.items()
          if np.issubdtype(np.asarray(v).dtype, np.floating)}


def select_paths(params: Any, *, first_k: int | None = None,
                 include: str | Sequence[str] | None = None,
                 exclude: str | Sequence[str] = (),
                 order: Sequence[str] | None = None) -> list[str]:
  """The float leaf paths a signature keeps, in depth order.

  Either the leaves of the first ``first_k`` layers by depth (the
  reference's ``keep_num``; ``trees.select_by_depth``), or those matching
  ``include`` patterns (``trees.match``; e.g. ``features/conv[1-5]``),
  minus ``exclude`` in both cases.
  """
  if (first_k is None) == (include is None):
    raise ConfigError("choose the signature's layers with exactly one of "
                      "first_k (first k layers by depth) or include (path "
                      "patterns)")
  if first_k is not None:
    n_layers = len(trees.layers(params, order))
    if not 1 <= int(first_k) <= n_layers:
      raise ConfigError(f"first_k={first_k} must be from 1 to the model's "
                        f"{n_layers} layers")
    flat = trees.select_by_depth(params, 0, int(first_k), order)
  else:
    flat = trees.select(params, include)
  exclude = [exclude] if isinstance(exclude, str) else list(exclude)
  flat = {p: v for p, v in _floats_only(flat).items()
          if not any(trees.match(p, e) for e in exclude)}
  if not flat:
    raise ConfigError("the layer selection keeps no float tensor; widen "
                      "first_k or the include patterns")
  return trees.depth_order(flat, order)


def extract(theta_pre: Any, clean: Any, robust: Any, *,
            first_k: int | None = None,
            include: str | Sequence[str] | None = None,
            exclude: str | Sequence[str] = (), bits: int | None = None,
            order: Sequence[str] | None = None,
            meta: Mapping[str, Any] | None = None) -> Signature:
  """The signature of ``robust`` against ``clean``, both from ``theta_pre``.

  Args:
    theta_pre, clean, robust: params trees of one model, the clean and
      robust models fine-tuned from ``theta_pre``. ``clean`` and ``robust``
      must have the same paths, shapes and dtypes; ``theta_pre`` only in
      the kept layers, so its head may have another class count (a start
      trained on another label set, as the reference's ImageNet start).
    first_k / include / exclude / order: the layers kept (``select_paths``).
    bits: quantize each kept tensor to this many bits (1..32); None keeps
      float32.
    meta: provenance stored with the signature.

  Returns:
    A ``Signature`` whose tensor at path p is ``v_c[p]`` (see the module
    doc), dequantized if ``bits`` is set.
  """
  bits = check_bits(bits)
  trees.check_compatible(clean, robust, "the clean and the robust model")
  paths = select_paths(clean, first_k=first_k, include=include,
                       exclude=exclude, order=order)
  fp, fs, fc = (trees.flatten(t) for t in (theta_pre, clean, robust))
  trees.check_compatible({p: fp[p] for p in paths if p in fp},
                         {p: fs[p] for p in paths},
                         "theta_pre and the clean model (kept layers)")
  tensors, quant, codes = {}, {}, {}
  for path in paths:
    pre = np.asarray(fp[path], np.float64)
    v = project_out(np.asarray(fc[path], np.float64) - pre,
                    np.asarray(fs[path], np.float64) - pre)
    if bits is None:
      tensors[path] = v.astype(np.float32)
    else:
      c, low, step = quantize(v, bits)
      codes[path], quant[path] = c, (low, step)
      tensors[path] = dequantize(c, low, step)
  return Signature(tensors, bits, quant, codes, dict(meta or {}))


def scale(sig: Signature, coefficient: float) -> Signature:
  """``coefficient * sig``. A quantized signature keeps its codes (the
  dequantization ``low`` and ``step`` are scaled), so it stays storable."""
  c = float(coefficient)
  if not np.isfinite(c):
    raise ConfigError(f"coefficient={coefficient} is not a finite number")
  quant = {p: (low * c, step * c) for p, (low, step) in sig.quant.items()}
  if sig.bits is not None:
    tensors = {p: dequantize(sig.codes[p], *quant[p]) for p in sig.tensors}
  else:
    tensors = {p: (v.astype(np.float64) * c).astype(np.float32)
               for p, v in sig.tensors.items()}
  meta = dict(sig.meta, scaled_by=float(sig.meta.get("scaled_by", 1.0)) * c)
  return Signature(tensors, sig.bits, quant, dict(sig.codes), meta)


def reference_coefficients(alpha: float, count: int) -> list[float]:
  """The effective coefficients of the reference code for ``--alpha
  alpha`` and ``count`` signatures: ``(alpha / count) ** 2`` each (it
  applies its weight twice). Pass them to ``patch`` to reproduce it."""
  if count < 1:
    raise ConfigError("reference_coefficients needs at least one signature")
  return [(float(alpha) / count) ** 2] * count


def check_fits(params: Any, sig: Signature, what: str = "the model") -> None:
  """ConfigError naming the first path of ``sig`` that ``params`` lacks or
  holds with another shape."""
  flat = trees.flatten(params)
  for path, v in sig.tensors.items():
    if path not in flat:
      near = next(iter(trees.depth_order(flat)), "")
      raise ConfigError(
          f"signature '{sig.name()}' has {path}, which {what} lacks (its "
          f"paths look like {near!r}); use a signature of the same "
          "architecture")
    have = tuple(np.shape(flat[path]))
    if have != tuple(v.shape):
      raise ConfigError(
          f"signature '{sig.name()}' has {path} of shape {list(v.shape)} but "
          f"{what} holds {list(have)}; use a signature of the same "
          "architecture and width")


def coefficients_of(sigs: Sequence[Signature],
                    coefficients: float | Sequence[float] | None
                    ) -> list[float]:
  """One finite coefficient per signature (None = 1 each, a number = that
  for each); ConfigError otherwise."""
  if coefficients is None:
    coefficients = [1.0] * len(sigs)
  elif np.isscalar(coefficients):
    coefficients = [float(coefficients)] * len(sigs)
  coefficients = [float(c) for c in coefficients]
  if len(coefficients) != len(sigs):
    raise ConfigError(f"{len(sigs)} signatures but {len(coefficients)} "
                      "coefficients; give one coefficient per signature")
  for c in coefficients:
    if not np.isfinite(c):
      raise ConfigError(f"coefficient {c} is not a finite number")
  return coefficients


def as_list(signatures: Signature | Sequence[Signature]) -> list[Signature]:
  """One signature or several, as a non-empty list."""
  sigs = [signatures] if isinstance(signatures, Signature) else list(
      signatures)
  if not sigs:
    raise ConfigError("no signature given; pass one or more")
  return sigs


def compose(signatures: Signature | Sequence[Signature],
            coefficients: float | Sequence[float] | None = None
            ) -> dict[str, np.ndarray]:
  """``sum_i coefficients[i] * signatures[i]`` as ``{path: float32}`` over
  the union of their paths (float64 accumulation). Signatures that share
  a path must agree on its shape."""
  sigs = as_list(signatures)
  coefs = coefficients_of(sigs, coefficients)
  total: dict[str, np.ndarray] = {}
  for sig, c in zip(sigs, coefs):
    for path, v in sig.tensors.items():
      if path in total and total[path].shape != v.shape:
        raise ConfigError(f"signatures disagree on the shape of {path}: "
                          f"{list(total[path].shape)} vs {list(v.shape)}; "
                          "compose signatures of one architecture")
      total[path] = total.get(path, 0.0) + c * v.astype(np.float64)
  return {p: v.astype(np.float32) for p, v in total.items()}


def patch(params: Any, signatures: Signature | Sequence[Signature],
          coefficients: float | Sequence[float] | None = None) -> Any:
  """``params + sum_i coefficients[i] * signatures[i]`` (a new tree).

  Args:
    params: a params tree (nested dict) of any model whose kept layers have
      the signatures' paths and shapes; the others are copied.
    signatures: one signature or several.
    coefficients: one per signature (default 1.0 each; linear, see the
      module doc).

  Returns:
    A nested dict like ``params``; patched leaves keep their dtype.
    ``params`` is not modified; nothing is computed if a signature does
    not fit (ConfigError naming the path).
  """
  sigs = as_list(signatures)
  for sig in sigs:
    check_fits(params, sig)
  delta = compose(sigs, coefficients)
  out = {}
  for path, value in trees.flatten(params).items():
    if path in delta:
      arr = np.asarray(value)
      # float64 sum, one rounding to the leaf's dtype.
      out[path] = (arr.astype(np.float64) + delta[path]).astype(arr.dtype)
    else:
      out[path] = value
  return trees.unflatten(out)


def unpatch(params: Any, signatures: Signature | Sequence[Signature],
            coefficients: float | Sequence[float] | None = None) -> Any:
  """Removes what ``patch`` with the same arguments added (to float
  rounding: ``patch`` rounds the sum to the leaf's dtype once)."""
  sigs = as_list(signatures)
  coefs = coefficients_of(sigs, coefficients)
  return patch(params, sigs, [-c for c in coefs])
