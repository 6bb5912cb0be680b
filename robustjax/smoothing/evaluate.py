"""Clean, attacked and certified accuracy of a mixture, on the same points.

``make_evaluator`` builds ``eval_fn(variables) -> metrics`` once for a
mixture (a fixed-weight ``MixedClassifier`` or an ``AdaptiveClassifier``);
calling it for each point of a grid (each ``a``) reuses every compiled
program. Per point of the split it computes:

* the clean prediction, the robust model's margin and the weight ``a``;
* AutoAttack on the mixture end to end (``attacks.run_autoattack``: the
  gradients pass through both models and, for the adaptive mixture, through
  ``a(x)``);
* the transfer attacks: an attack crafted against one base model alone
  (``pgd_std`` against the standard model, ``pgd_rob`` against the robust
  one) and scored on the mixture;
* the worst case: a point is robust only if it is classified correctly
  clean and after every one of these attacks.

It also reports the fraction of points the margin certificate covers
(``certificate.certified``) at the weight of each point (fixed ``a``) or at
the lowest weight the adaptive mixture can take.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data
from robustjax.attacks import Attack, autoattack
from robustjax.smoothing import certificate

# (variables, x [B, H, W, C]) -> [B, C]
LogitsFn = Callable[[Any, jax.Array], jax.Array]
EvalFn = Callable[[Any], dict[str, Any]]


def _rows_step(mixture, mesh):
  """``(variables, batch, key) -> {log_probs, rob_logits, alpha}`` rows."""

  def step(variables, batch, key):
    del key
    x = data.to_float(batch["image"])
    if hasattr(mixture, "forward"):
      out = mixture.forward(variables, x, "eval")
      return {"log_probs": out.log_probs, "rob_logits": out.rob_logits,
              "alpha": out.alpha}
    _, rob = mixture.both_logits(variables, x)
    return {"log_probs": mixture.apply(variables, x), "rob_logits": rob,
            "alpha": jnp.broadcast_to(variables["alpha"], x.shape[:1])}

  return data.compile_step(step, mesh, keyed=False)


def _transfer_step(mixture, source: LogitsFn, attack: Attack, mesh):
  """``(variables, batch, key) -> {ok}``: the mixture's correctness on the
  attack crafted against ``source`` alone, each example keyed by its
  index."""

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    y = batch["label"]
    x_adv = attack(lambda z: source(variables, z), x, y,
                   data.example_keys(key, batch["index"]))
    return {"ok": jnp.argmax(mixture.apply(variables, x_adv), -1) == y}

  return data.compile_step(step, mesh)


def transfer_sources(std_model, rob_model) -> dict[str, LogitsFn]:
  """``{"std": g, "rob": h}``: each base model's logits on a mixture's
  variables (``{"std", "rob", ...}``)."""
  return {
      "std": lambda v, x: std_model.apply(v["std"], x, train=False),
      "rob": lambda v, x: rob_model.apply(v["rob"], x, train=False),
  }


def make_evaluator(mixture, split: data.ArraySplit, mesh, *,
                   autoattack_config: autoattack.AutoAttackConfig | None,
                   transfer: Mapping[str, tuple[LogitsFn, Attack]],
                   batch_size: int, num_examples: int, seed: int = 0,
                   chunk_size: int = autoattack.DEFAULT_CHUNK_SIZE,
                   rob_scale: float = 1.0,
                   certify_alpha: float | None = None,
                   log: Callable[[str], None] | None = None) -> EvalFn:
  """``eval_fn(variables) -> metrics`` of ``mixture`` on the first
  ``num_examples`` points of ``split``.

  Args:
    mixture: a ``MixedClassifier`` or an ``AdaptiveClassifier``.
    split: the evaluation split.
    mesh: the device mesh.
    autoattack_config: the cascade run on the mixture; None skips it.
    transfer: ``{name: (source_fn, attack)}``: ``attack`` crafted against
      ``source_fn(variables, x) -> [B, C]`` and scored on the mixture.
    batch_size, num_examples, seed, chunk_size: as ``run_autoattack``.
    rob_scale: the robust model's temperature (for its margin).
    certify_alpha: the weight the certificate uses; None: each point's own
      ``a`` (fixed mixtures). For an adaptive mixture pass the lowest ``a``
      it can take, which makes the certificate hold for every ``a(x)``.
    log: called with a line per attack.

  Returns:
    ``eval_fn``; its metrics: ``clean_acc``, ``autoattack_acc`` and
    ``autoattack_by_attack`` (fractions robust after each attack of the
    cascade), ``transfer_acc`` (``{name: acc}``), ``robust_acc`` (the
    worst case over all of them), ``certified_frac``, ``alpha_mean``,
    ``alpha_min``, ``alpha_max``, ``num_examples``, ``seconds``.
  """
  rows_step = _rows_step(mixture, mesh)
  transfer_steps = {name: _transfer_step(mixture, fn, atk, mesh)
                    for name, (fn, atk) in transfer.items()}
  images = split.images[:num_examples]
  labels = np.asarray(split.labels[:num_examples])
  keyed_apply = lambda v, x, k: mixture.apply(v, x)  # noqa: E731

  def eval_fn(variables):
    start = time.time()
    rows = data.collect_rows(rows_step, variables, split, mesh,
                             batch_size=batch_size, num_examples=num_examples)
    clean_ok = rows["log_probs"].argmax(-1) == labels
    alpha = rows["alpha"]
    a_cert = alpha if certify_alpha is None else np.full_like(
        alpha, certify_alpha)
    cert = np.asarray(certificate.certified(
        jnp.asarray(rows["rob_logits"]), jnp.asarray(labels),
        jnp.asarray(a_cert), rob_scale=rob_scale))
    robust = clean_ok.copy()
    out: dict[str, Any] = {
        "clean_acc": float(clean_ok.mean()),
        "certified_frac": float(cert.mean()),
        "alpha_mean": float(alpha.mean()), "alpha_min": float(alpha.min()),
        "alpha_max": float(alpha.max()), "num_examples": int(labels.size)}
    if autoattack_config is not None:
      result = autoattack.run_autoattack(
          keyed_apply, variables, images, labels, autoattack_config,
          mesh=mesh, batch_size=batch_size, chunk_size=chunk_size,
          on_attack=None if log is None else lambda row: log(
              f"autoattack {row['attack']}: robust "
              f"{100 * row['robust_acc']:.2f}% ({row['seconds']} s)"))
      out["autoattack_acc"] = result.robust_acc
      out["autoattack_by_attack"] = {a["attack"]: a["robust_acc"]
                                     for a in result.by_attack}
      robust &= result.robust
    out["transfer_acc"] = {}
    for name, step in transfer_steps.items():
      ok = data.collect_rows(step, variables, split, mesh,
                             batch_size=batch_size, num_examples=num_examples,
                             key=jax.random.key(seed))["ok"] & clean_ok
      out["transfer_acc"][name] = float(ok.mean())
      robust &= ok
      if log is not None:
        log(f"transfer {name}: robust {100 * ok.mean():.2f}%")
    out["robust_acc"] = float(robust.mean())
    out["seconds"] = round(time.time() - start, 1)
    return out

  return eval_fn
