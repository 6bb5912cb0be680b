"""Clean and adversarial (PGD) accuracy of a model on a dataset split.

One compiled step per (model, attack) evaluates a padded batch; padding rows
carry ``mask=False`` and do not count. Accuracies are fractions in [0, 1];
the console shows percentages.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from robustjax import attacks, data, sharding
from robustjax.errors import ConfigError


def attack_name(cfg: Any) -> str:
  """A short label for an attack config, e.g. ``pgd20`` or ``none``."""
  if int(cfg.steps) <= 0:
    return "none"
  restarts = int(cfg.get("restarts", 1))
  return f"pgd{int(cfg.steps)}" + (f"x{restarts}" if restarts > 1 else "")


def validate_attack(cfg: Any) -> None:
  if not 0.0 <= float(cfg.eps) <= 1.0:
    raise ConfigError(f"attack eps={cfg.eps} is outside [0, 1]; epsilons are "
                      "in pixel units of [0, 1] images, e.g. 8/255")
  if int(cfg.steps) < 0 or int(cfg.get("restarts", 1)) < 1:
    raise ConfigError("attack steps must be >= 0 and restarts >= 1")


def make_eval_step(model, attack_cfg: Any, mesh):
  """A jitted ``(variables, batch, key) -> {clean, adv, count}`` of sums.

  ``adv`` counts points still correct after the attack (equal to ``clean``
  when ``attack_cfg.steps == 0``). Each example's random start is keyed by
  ``fold_in(key, batch["index"])``, its position in the split, so the result
  does not depend on the batch size or the number of devices.
  """
  steps = int(attack_cfg.steps)

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    y = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
    clean_ok = (jnp.argmax(logits_fn(x), -1) == y).astype(jnp.float32)
    if steps > 0:
      example_keys = jax.vmap(jax.random.fold_in, (None, 0))(
          key, batch["index"])
      x_adv = attacks.pgd(
          logits_fn, x, y, key=example_keys, eps=float(attack_cfg.eps),
          step_size=float(attack_cfg.step_size), steps=steps,
          norm=attack_cfg.get("norm", "linf"),
          random_start=bool(attack_cfg.get("random_start", True)),
          restarts=int(attack_cfg.get("restarts", 1)),
          loss=attack_cfg.get("loss", "ce"))
      adv_ok = (jnp.argmax(logits_fn(x_adv), -1) == y).astype(jnp.float32)
      # A point wrong on clean input counts as broken whatever the attack did.
      adv_ok = adv_ok * clean_ok
    else:
      adv_ok = clean_ok
    return {"clean": jnp.sum(clean_ok * mask), "adv": jnp.sum(adv_ok * mask),
            "count": jnp.sum(mask)}

  return jax.jit(step, in_shardings=(sharding.replicated(mesh),
                                     sharding.batch_sharded(mesh),
                                     sharding.replicated(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(model, variables: Any, split: data.ArraySplit, mesh, *,
             attack_cfg: Any, batch_size: int, num_examples: int | None = None,
             seed: int = 0, eval_step=None) -> dict[str, float]:
  """Clean and PGD accuracy on the first ``num_examples`` points of ``split``.

  Returns ``{"clean_acc", "adv_acc", "attack", "num_examples"}``: accuracies
  are fractions, ``attack`` names the attack (e.g. ``pgd20``).
  """
  validate_attack(attack_cfg)
  eval_step = eval_step or make_eval_step(model, attack_cfg, mesh)
  variables = sharding.put_replicated(variables, mesh)
  key = sharding.put_replicated(jax.random.key(seed), mesh)
  totals = {"clean": 0.0, "adv": 0.0, "count": 0.0}
  for batch in data.eval_batches(split, batch_size, mesh,
                                 num_examples=num_examples):
    sums = eval_step(variables, batch, key)
    for name in totals:
      totals[name] += float(sums[name])
  count = max(totals["count"], 1.0)
  return {"clean_acc": totals["clean"] / count,
          "adv_acc": totals["adv"] / count,
          "attack": attack_name(attack_cfg),
          "num_examples": int(totals["count"])}


def format_accuracies(metrics: dict[str, Any]) -> str:
  """``clean 52.10% | pgd20 27.30% (n=1000)`` for the console."""
  return (f"clean {100 * metrics['clean_acc']:.2f}% | {metrics['attack']} "
          f"{100 * metrics['adv_acc']:.2f}% (n={metrics['num_examples']})")

