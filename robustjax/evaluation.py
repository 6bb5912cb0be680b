"""Accuracy of a model on a split: clean, under an attack, under corruptions.

Every evaluation in robustjax runs through ``data.map_batches``
(``data/batched.py``): a compiled per-batch step ``(variables, batch, key)
-> outputs`` over the first N points of a split in fixed-size padded
batches, reduced by ``data.sum_batches`` (masked sums: accuracies, losses)
or ``data.collect_rows`` (one row per example: logits). Each example's
randomness is keyed by its index in the split, so no result depends on the
batch size or the number of devices.

Attacks come from the attack registry (``robustjax.attacks.build``), so
``evaluate`` runs any registered attack. Accuracies are fractions in [0, 1];
the console shows percentages.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from robustjax import attacks, data, sharding
from robustjax.attacks import Attack
from robustjax.attacks import iterative as it
from robustjax.data import corrupted
from robustjax.data import corruptions as corruptions_lib
from robustjax.errors import ConfigError

# Iterations per compiled chunk of an attack in evaluation: one program of
# this many unrolled steps serves every chunk of every batch (measured in
# benchmarks/README.md, "Chunked evaluation").
DEFAULT_CHUNK_SIZE = 5


def _accuracy_sums(logits_fn, x, y, mask, x_adv) -> dict[str, jax.Array]:
  """Masked sums of correct predictions and cross-entropy, clean and at
  ``x_adv`` (None: the clean pass stands for both)."""
  logits = logits_fn(x)
  clean_ok = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
  clean_loss = attacks.cross_entropy(logits, y)
  adv_ok, adv_loss = clean_ok, clean_loss
  if x_adv is not None:
    adv_logits = logits_fn(x_adv)
    # A point wrong on clean input counts as broken whatever the attack did.
    adv_ok = (jnp.argmax(adv_logits, -1) == y).astype(jnp.float32) * clean_ok
    adv_loss = attacks.cross_entropy(adv_logits, y)
  return {"clean": jnp.sum(clean_ok * mask), "adv": jnp.sum(adv_ok * mask),
          "count": jnp.sum(mask), "clean_loss": jnp.sum(clean_loss * mask),
          "adv_loss": jnp.sum(adv_loss * mask)}


def make_eval_step(model, attack: Attack, mesh, *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> data.Step:
  """A ``(variables, batch, key) -> {clean, adv, count, clean_loss,
  adv_loss}`` step of masked sums, compiled.

  ``adv`` counts points still correct after ``attack`` (equal to ``clean``
  for the ``none`` attack); the losses are cross-entropy sums at the clean
  and the attacked points (the weight-space curves use them). The attack
  runs with BatchNorm in inference mode, each example keyed by
  ``fold_in(key, batch["index"])``.

  An attack with a chunked form (``Attack.chunked``: ``pgd``, ``apgd-ce``,
  ``apgd-dlr``) and more than ``chunk_size`` iterations runs as compiled
  chunks of at most ``chunk_size`` unrolled iterations, called in turn
  (``_ChunkedEvalStep``): compile and trace time no longer grow with the
  number of steps, and the per-point results are those of the one-program
  form. ``chunk_size=0`` compiles every iteration into one program.
  """
  chunked = None if attack.is_identity or chunk_size <= 0 else (
      attack.chunked())
  if chunked is not None:
    plan = it.chunk_plan(chunked.steps, chunk_size)
    if len(plan) > 1:
      return _ChunkedEvalStep(model, chunked, plan, mesh)

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
    x_adv = None
    if not attack.is_identity:
      x_adv = attack(logits_fn, x, batch["label"],
                     data.example_keys(key, batch["index"]))
    return _accuracy_sums(logits_fn, x, batch["label"],
                          batch["mask"].astype(jnp.float32), x_adv)

  return data.compile_step(step, mesh)


class _ChunkedEvalStep:
  """The evaluation step of an attack run in compiled chunks: ``init``
  (the start), ``chunk`` (``count`` unrolled iterations from a traced
  ``start``, one program for every chunk) and ``finish`` (the accuracy
  sums), each jitted over the mesh like ``data.compile_step``."""

  def __init__(self, model, chunked, plan: list[tuple[int, int]], mesh):
    self.plan = plan
    count = plan[0][1]
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)

    def unpack(variables, batch, key):
      logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
      keys = None if key is None else data.example_keys(key, batch["index"])
      return logits_fn, data.to_float(batch["image"]), batch["label"], keys

    def init(variables, batch, key):
      return chunked.init(*unpack(variables, batch, key))

    def chunk(variables, batch, key, state, start):
      step = chunked.make_step(*unpack(variables, batch, key))
      return it.run_steps(step, state, start, count)

    def finish(variables, batch, state):
      logits_fn, x, y, _ = unpack(variables, batch, None)
      return _accuracy_sums(logits_fn, x, y,
                            batch["mask"].astype(jnp.float32),
                            chunked.output(state, x))

    self.init = jax.jit(init, in_shardings=(rep, bat, rep),
                        out_shardings=bat)
    self.chunk = jax.jit(chunk, in_shardings=(rep, bat, rep, bat, rep),
                         out_shardings=bat, donate_argnums=(3,))
    self.finish = jax.jit(finish, in_shardings=(rep, bat, bat),
                          out_shardings=rep)

  def __call__(self, variables, batch, key) -> dict[str, jax.Array]:
    state = self.init(variables, batch, key)
    for start, _ in self.plan:
      state = self.chunk(variables, batch, key, state, np.int32(start))
    return self.finish(variables, batch, state)


def evaluate(model, variables: Any, split: data.ArraySplit, mesh, *,
             attack: Attack, batch_size: int, num_examples: int | None = None,
             seed: int = 0, eval_step: data.Step | None = None,
             with_losses: bool = False,
             chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, Any]:
  """Clean and adversarial accuracy on the first ``num_examples`` points.

  Returns ``{"clean_acc", "adv_acc", "attack", "num_examples"}``
  (accuracies are fractions, ``attack`` the attack's label, e.g.
  ``pgd20``); ``with_losses`` adds ``clean_loss`` and ``adv_loss`` (mean
  cross-entropy). ``eval_step`` reuses a step from ``make_eval_step``;
  otherwise one is made with ``chunk_size`` (see ``make_eval_step``).
  """
  eval_step = eval_step or make_eval_step(model, attack, mesh,
                                          chunk_size=chunk_size)
  sums = data.sum_batches(eval_step, variables, split, mesh,
                     batch_size=batch_size, num_examples=num_examples,
                     key=jax.random.key(seed))
  count = max(sums["count"], 1.0)
  out = {"clean_acc": sums["clean"] / count, "adv_acc": sums["adv"] / count,
         "attack": attack.label, "num_examples": int(sums["count"])}
  if with_losses:
    out.update(clean_loss=sums["clean_loss"] / count,
               adv_loss=sums["adv_loss"] / count)
  return out


def format_accuracies(metrics: Mapping[str, Any]) -> str:
  """``clean 52.10% | pgd20 27.30% (n=1000)`` for the console."""
  return (f"clean {100 * metrics['clean_acc']:.2f}% | {metrics['attack']} "
          f"{100 * metrics['adv_acc']:.2f}% (n={metrics['num_examples']})")


# ------------------------------------------------------------ corruptions

def make_accuracy_step(model, mesh,
                       transform: Callable[[jax.Array, jax.Array],
                                           jax.Array] | None = None
                       ) -> data.Step:
  """A jitted ``(variables, batch, key) -> {correct, count}`` of masked sums.

  ``transform(keys [B], x [B, H, W, C]) -> x`` changes the float images
  first (a corruption), each example keyed by ``fold_in(key, index)``;
  without one the step takes ``key=None`` and scores the images as they are.
  """

  def step(variables, batch, key):
    x = data.to_float(batch["image"])
    if transform is not None:
      x = transform(data.example_keys(key, batch["index"]), x)
    logits = model.apply(variables, x, train=False)
    ok = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    return {"correct": jnp.sum(ok * mask), "count": jnp.sum(mask)}

  return data.compile_step(step, mesh, keyed=transform is not None)


def make_corruption_step(model, mesh, name: str, severity: int
                         ) -> data.Step:
  """``make_accuracy_step`` on the batch corrupted by ``name`` at
  ``severity``, cast to uint8 levels by truncation as CIFAR-10-C's files
  are, so the accuracy equals that on a materialised copy
  (``data.corrupted.corrupt_split``)."""
  corrupt = corruptions_lib.batched_fn(name, severity)

  def transform(keys, x):
    return corruptions_lib.to_uint8(corrupt(keys, x)).astype(
        jnp.float32) / 255.0

  return make_accuracy_step(model, mesh, transform)


def accuracy(step: data.Step, variables: Any, split: data.ArraySplit, mesh, *,
             batch_size: int, num_examples: int | None = None,
             key: Any = None) -> tuple[float, int]:
  """``(accuracy, points)`` of a ``make_accuracy_step`` step."""
  sums = data.sum_batches(step, variables, split, mesh, batch_size=batch_size,
                     num_examples=num_examples, key=key)
  return sums["correct"] / max(sums["count"], 1.0), int(sums["count"])


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
  variables = sharding.put_replicated(variables, mesh)  # once for all
  severities = tuple(int(s) for s in severities)
  if not severities:
    raise ConfigError("no corruption severities given; use e.g. (1,2,3,4,5)")
  for s in severities:
    corruptions_lib.check_severity(s)
  by_name: dict[str, dict[str, float]] = {}
  counts = set()
  plain_step = None
  for name in names:
    by_name[name] = {}
    for severity in severities:
      if corrupted_splits is not None or \
          name in corruptions_lib.HOST_CORRUPTIONS:
        plain_step = plain_step or make_accuracy_step(model, mesh)
        if corrupted_splits is not None:
          source = corrupted_splits(name, severity)
        else:
          # A host callback inside a step sharded over several CPU devices
          # deadlocked XLA's collectives; corrupt these points up front
          # (same keys and uint8 cast, so the same images).
          source = _corrupt_on_host(split, num_examples, name, severity,
                                    seed)
        acc, n = accuracy(plain_step, variables, source, mesh,
                          batch_size=batch_size, num_examples=num_examples)
      else:
        acc, n = accuracy(make_corruption_step(model, mesh, name, severity),
                          variables, split, mesh, batch_size=batch_size,
                          num_examples=num_examples,
                          key=corrupted.corruption_key(seed, name, severity))
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


def format_corruptions(metrics: Mapping[str, Any], label: str = "") -> str:
  """``ood rift18 71.23% (18 corruptions x 5 severities, n=10000)``; the
  worst corruption is named too."""
  worst = min(metrics["ood_corruption_mean"].items(), key=lambda kv: kv[1])
  return (f"ood {label + ' ' if label else ''}{100 * metrics['ood_acc']:.2f}% "
          f"({len(metrics['ood_corruptions'])} corruptions x "
          f"{len(metrics['ood_severities'])} severities, "
          f"n={metrics['ood_num_examples']}; worst {worst[0]} "
          f"{100 * worst[1]:.2f}%)")
