"""Clean, adversarial (PGD) and corruption (OOD) accuracy of a model on a
dataset split.

One compiled step per (model, attack) evaluates a padded batch; padding rows
carry ``mask=False`` and do not count. Accuracies are fractions in [0, 1];
the console shows percentages.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from robustjax import attacks, data, sharding
from robustjax.data import corrupted
from robustjax.data import corruptions as corruptions_lib
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
  """A jitted ``(variables, batch, key) -> {clean, adv, count, clean_loss,
  adv_loss}`` of sums.

  ``adv`` counts points still correct after the attack (equal to ``clean``
  when ``attack_cfg.steps == 0``); the losses are cross-entropy sums at the
  clean and the attacked points (the weight-space curves use them). Each
  example's random start is keyed by ``fold_in(key, batch["index"])``, its
  position in the split, so the result does not depend on the batch size or
  the number of devices.
  """
  steps = int(attack_cfg.steps)

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    y = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
    logits = logits_fn(x)
    clean_ok = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    clean_loss = attacks.cross_entropy(logits, y)
    adv_loss = clean_loss
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
      adv_logits = logits_fn(x_adv)
      adv_ok = (jnp.argmax(adv_logits, -1) == y).astype(jnp.float32)
      # A point wrong on clean input counts as broken whatever the attack did.
      adv_ok = adv_ok * clean_ok
      adv_loss = attacks.cross_entropy(adv_logits, y)
    else:
      adv_ok = clean_ok
    return {"clean": jnp.sum(clean_ok * mask), "adv": jnp.sum(adv_ok * mask),
            "count": jnp.sum(mask), "clean_loss": jnp.sum(clean_loss * mask),
            "adv_loss": jnp.sum(adv_loss * mask)}

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



# ------------------------------------------------------------ corruptions

def make_corruption_step(model, mesh, name: str, severity: int):
  """A jitted ``(variables, batch, key) -> {correct, count}`` of sums on the
  batch corrupted by ``name`` at ``severity``.

  Image i is corrupted with ``fold_in(key, batch["index"][i])`` and cast to
  uint8 levels by truncation, as CIFAR-10-C's files are, so the accuracy
  equals that on a materialised copy (``data.corrupted.corrupt_split``) and
  does not depend on the batch size or the number of devices.
  """
  corrupt = corruptions_lib.batched_fn(name, severity)

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch["index"])
    x = corruptions_lib.to_uint8(corrupt(keys, x)).astype(jnp.float32) / 255.0
    logits = model.apply(variables, x, train=False)
    ok = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    return {"correct": jnp.sum(ok * mask), "count": jnp.sum(mask)}

  return jax.jit(step, in_shardings=(sharding.replicated(mesh),
                                     sharding.batch_sharded(mesh),
                                     sharding.replicated(mesh)),
                 out_shardings=sharding.replicated(mesh))


def _accuracy(step, variables, split, mesh, batch_size, num_examples, key
              ) -> tuple[float, int]:
  correct = count = 0.0
  for batch in data.eval_batches(split, batch_size, mesh,
                                 num_examples=num_examples):
    sums = step(variables, batch, key)
    correct += float(sums["correct"])
    count += float(sums["count"])
  return correct / max(count, 1.0), int(count)


def evaluate_corruptions(
    model, variables: Any, split: data.ArraySplit, mesh, *,
    corruptions: str | tuple[str, ...] | list[str],
    severities: tuple[int, ...] = (1, 2, 3, 4, 5), batch_size: int,
    num_examples: int | None = None, seed: int = 0,
    corrupted_splits: Callable[[str, int], data.ArraySplit] | None = None,
) -> dict[str, Any]:
  """Accuracy under each corruption and severity (out-of-distribution).

  Args:
    model, variables: the network (``model.apply(variables, x,
      train=False)``).
    split: the clean split; its first ``num_examples`` points are corrupted
      on the fly (per-example keys from ``seed``; see
      ``make_corruption_step``).
    mesh: the device mesh; ``batch_size`` must divide over it.
    corruptions: a list name (``rift18``, ``benchmark15``, ``all19``) or
      corruption names.
    severities: which severities (1..5).
    corrupted_splits: if given, ``(name, severity) -> ArraySplit`` of
      already corrupted images (e.g. the official CIFAR-10-C files via
      ``data.corrupted.load_cifar10_corrupted``), evaluated as they are
      instead of corrupting ``split``.

  Returns:
    ``{"ood_acc": mean over every (corruption, severity), "ood_by_corruption":
    {name: {"1": acc, ...}}, "ood_corruption_mean": {name: mean over
    severities}, "ood_corruptions": [names], "ood_severities": [...],
    "ood_num_examples": points per (corruption, severity)}``; accuracies
    are fractions. The mean is unweighted, as RiFT's eval_ood.py averages.
  """
  names = corruptions_lib.resolve(corruptions)
  severities = tuple(int(s) for s in severities)
  if not severities:
    raise ConfigError("no corruption severities given; use e.g. (1,2,3,4,5)")
  for s in severities:
    corruptions_lib.check_severity(s)
  variables = sharding.put_replicated(variables, mesh)
  by_name: dict[str, dict[str, float]] = {}
  counts = set()
  clean_step = None
  for name in names:
    by_name[name] = {}
    for severity in severities:
      if corrupted_splits is not None or \
          name in corruptions_lib.HOST_CORRUPTIONS:
        clean_step = clean_step or make_corruption_step_clean(model, mesh)
        if corrupted_splits is not None:
          source = corrupted_splits(name, severity)
        else:
          # A host callback inside a step sharded over several CPU devices
          # deadlocked XLA's collectives; corrupt these points up front
          # (same keys and uint8 cast, so the same images).
          source = _corrupt_on_host(split, num_examples, name, severity,
                                    seed)
        acc, n = _accuracy(clean_step, variables, source, mesh, batch_size,
                           num_examples, None)
      else:
        step = make_corruption_step(model, mesh, name, severity)
        key = sharding.put_replicated(
            corrupted.corruption_key(seed, name, severity), mesh)
        acc, n = _accuracy(step, variables, split, mesh, batch_size,
                           num_examples, key)
      by_name[name][str(severity)] = acc
      counts.add(n)
    # One line per corruption: a full run is minutes on a CPU.
    logging.info("ood %s: %s", name, " ".join(
        f"s{s} {100 * a:.2f}%" for s, a in by_name[name].items()))
  accs = [a for per in by_name.values() for a in per.values()]
  return {"ood_acc": sum(accs) / len(accs),
          "ood_by_corruption": by_name,
          "ood_corruption_mean": {k: sum(v.values()) / len(v)
                                  for k, v in by_name.items()},
          "ood_corruptions": list(names),
          "ood_severities": list(severities),
          "ood_num_examples": max(counts)}


def _corrupt_on_host(split: data.ArraySplit, num_examples: int | None,
                     name: str, severity: int, seed: int) -> data.ArraySplit:
  n = len(split) if num_examples is None else min(num_examples, len(split))
  rows = np.arange(n)
  images = corrupted.corrupt_images(split.images[:n], rows, name, severity,
                                    seed)
  return data.ArraySplit(images, split.labels[:n], split.num_classes,
                         split.name)


def make_corruption_step_clean(model, mesh):
  """``make_corruption_step`` for images that are already corrupted."""
  def step(variables, batch, key):
    del key
    logits = model.apply(variables, data.to_float(batch["image"]),
                         train=False)
    ok = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    return {"correct": jnp.sum(ok * mask), "count": jnp.sum(mask)}

  return jax.jit(step, in_shardings=(sharding.replicated(mesh),
                                     sharding.batch_sharded(mesh), None),
                 out_shardings=sharding.replicated(mesh))


def format_corruptions(metrics: dict[str, Any], label: str = "") -> str:
  """``ood rift18 71.23% (18 corruptions x 5 severities, n=10000)``; the
  worst corruption is named too."""
  worst = min(metrics["ood_corruption_mean"].items(), key=lambda kv: kv[1])
  return (f"ood {label + ' ' if label else ''}{100 * metrics['ood_acc']:.2f}% "
          f"({len(metrics['ood_corruptions'])} corruptions x "
          f"{len(metrics['ood_severities'])} severities, "
          f"n={metrics['ood_num_examples']}; worst {worst[0]} "
          f"{100 * worst[1]:.2f}%)")
