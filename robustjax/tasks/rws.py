"""The ``rws`` task: extract, patch and analyse robust weight signatures
(configs/rws.py:analyze, docs/rws.md).

From theta_pre, the clean model and the robust models (one per corruption),
it extracts and saves one signature per corruption, then measures:

* ``depth_profile``: per layer, ``||theta_c - theta_clean||`` (abs, rel);
* ``similarity``: cosine matrix between the signatures;
* ``scaling``: corrupted and clean accuracy of the patched target for each
  coefficient (default 0 .. 1.5);
* ``per_corruption``: corrupted accuracy of the target, of the patched
  target (coefficient 1) and of the robust model, clean accuracy after
  patching;
* ``cross``: each signature evaluated on every corruption;
* ``composition``: pairs (and all) of signatures added together, with
  coefficient 1 each (``composition='linear'``) or the reference code's
  ``(1/K)^2`` each (``'reference'``);
* ``storage``: signature size against the full model.

BatchNorm (``batch_stats``, a ``weightspace.batchnorm`` mode; default
``'average'``, the reference's rule, ``rws.batchnorm``): BN and shortcut
tensors are the robust models' mean and are left out of the signatures; on
a model with BatchNorm the running statistics are then re-estimated on the
training split corrupted with each corruption patched in (``bn_batches``
batches of ``bn_batch_size`` per corruption; 0 = one pass over the split,
as the reference), blended with the robust mean by
``rws.batchnorm.reference_alpha`` of the coefficients. A BN-free model
(VGG-16) has none of these tensors: nothing changes there. ``'keep_a'``
leaves the target's; ``'recompute'`` re-estimates on the clean training
images (same batches).

With ``target`` (transfer), the signatures patch another clean model from
the same theta_pre, evaluated on the classes its checkpoint recorded
(``target_classes``); its class count may differ, as the head is never
patched. theta_pre has to match the other models only in the kept layers.

Writes ``WORKDIR/signatures/<corruption>.rws``, ``WORKDIR/report.json``,
``WORKDIR/depth_profile.png``, ``similarity.png``, ``scaling.png``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import checkpoint, data, evaluation, models
from robustjax.data import corrupted, corruptions
from robustjax.errors import ConfigError
from robustjax.metrics import write_report
from robustjax.rws import analysis, batchnorm as rws_bn, fileformat
from robustjax.rws import signatures as sig_lib
from robustjax.tasks import common
from robustjax.weightspace import batchnorm, trees


def parse_robust(spec: str) -> dict[str, str]:
  """``"fog=DIR,contrast=DIR"`` -> ``{"fog": DIR, "contrast": DIR}``."""
  out = {}
  for item in filter(None, (s.strip() for s in str(spec).split(","))):
    name, sep, path = item.partition("=")
    if not sep or not path:
      raise ConfigError(f"robust entry {item!r} is not NAME=DIR; write "
                        "--config.robust=fog=workdirs/rws/fog,...")
    corruptions.check_name(name.strip())
    out[name.strip()] = path.strip()
  if not out:
    raise ConfigError("set --config.robust to NAME=DIR pairs of the robust "
                      "models (e.g. fog=workdirs/rws/fog)")
  return out


def target_classes(dataset_cfg: Any, target_meta: dict[str, Any]) -> str:
  """The classes to evaluate the target on: those its checkpoint recorded
  (``meta["dataset"]["classes"]``, written by the training loop) unless
  ``dataset_cfg.classes`` names them; naming other classes than the
  recorded ones is refused, since label i would then mean another class
  than the one the head learnt."""
  recorded = str((target_meta.get("dataset") or {}).get("classes", "") or "")
  wanted = str(dataset_cfg.get("classes", "") or "")
  total = data.DATASETS[dataset_cfg.name].num_classes \
      if dataset_cfg.name in data.DATASETS else 0
  if wanted and recorded and total and (
      data.parse_classes(wanted, total) != data.parse_classes(recorded, total)):
    raise ConfigError(
        f"dataset.classes='{wanted}' but the target model was trained on "
        f"classes '{recorded}'; leave dataset.classes empty to evaluate on "
        "the target's classes")
  return wanted or recorded


@dataclasses.dataclass
class _Plan:
  """The validated settings of one ``rws`` run."""
  paths: dict[str, str]        # theta_pre, clean and each corruption
  names: list[str]             # the corruptions
  target_path: str
  bits: int | None
  coefficients: list[float]
  bn_mode: str
  composition: str
  severity: int
  first_k: int | None
  include: list[str] | None


def _plan(config: Any) -> _Plan:
  """Everything checkable from the config and the checkpoint folders."""
  for key in ("theta_pre", "clean"):
    if not config.get(key):
      raise ConfigError(f"set --config.{key} to a training workdir or step "
                        "folder")
  robust = parse_robust(config.robust)
  paths = {"theta_pre": checkpoint.resolve(str(config.theta_pre)),
           "clean": checkpoint.resolve(str(config.clean))}
  paths.update({n: checkpoint.resolve(p) for n, p in robust.items()})
  coefficients = [float(c) for c in config.coefficients]
  if not coefficients or not all(np.isfinite(coefficients)):
    raise ConfigError("coefficients must be a non-empty list of finite "
                      "numbers, e.g. (0, 0.5, 1.0, 1.5)")
  composition = str(config.get("composition", "linear"))
  if composition not in ("linear", "reference"):
    raise ConfigError(f"composition='{composition}' is not 'linear' "
                      "(coefficient 1 each) or 'reference' ((1/K)^2 each, "
                      "as the reference code's --alpha 1)")
  severity = int(config.severity)
  corruptions.check_severity(severity)
  include = [p.strip() for p in str(config.get("include", "")).split(",")
             if p.strip()] or None
  return _Plan(
      paths, list(robust), checkpoint.resolve(str(config.target))
      if config.get("target") else paths["clean"],
      sig_lib.check_bits(int(config.get("bits", 0))), coefficients,
      batchnorm.check_mode(str(config.get("batch_stats", "average")),
                           batchnorm.PATCH_MODES, "batch_stats"),
      composition, severity, None if include else int(config.first_k),
      include)


class _Evaluator:
  """Accuracy of variables on fixed clean / corrupted copies of the first
  ``n`` points, with one compiled step (the corrupted copies are made once,
  with the keys of ``evaluation.evaluate_corruptions``)."""

  def __init__(self, model, split, mesh, n: int, batch_size: int,
               severity: int, seed: int):
    self.copies = {"clean": split.take(np.arange(n))}
    self.mesh, self.batch_size = mesh, batch_size
    self.severity, self.seed = severity, seed
    self.step = evaluation.make_accuracy_step(model, mesh)

  def accuracy(self, variables, name: str) -> float:
    if name not in self.copies:
      clean = self.copies["clean"]
      self.copies[name] = data.ArraySplit(
          corrupted.corrupt_images(clean.images, np.arange(len(clean)), name,
                                   self.severity, self.seed),
          clean.labels, clean.num_classes, clean.name)
    return evaluation.accuracy(self.step, variables, self.copies[name],
                               self.mesh, batch_size=self.batch_size)[0]


def _extract(plan: _Plan, loaded: dict[str, Any], target: dict[str, Any],
             spec: dict[str, Any], order: list[str]
             ) -> dict[str, sig_lib.Signature]:
  """One signature per corruption (checked to fit the target)."""
  sigs = {}
  for name in plan.names:
    sigs[name] = sig_lib.extract(
        loaded["theta_pre"]["params"], loaded["clean"]["params"],
        loaded[name]["params"], first_k=plan.first_k, include=plan.include,
        # 'average' takes BN and shortcut tensors from the robust mean, so
        # the signature leaves them out (the reference never projects them).
        exclude=(rws_bn.AVERAGED_PATTERNS if plan.bn_mode == "average"
                 else ()),
        bits=plan.bits, order=order,
        meta={"corruption": name, "severity": plan.severity,
              "theta_pre": plan.paths["theta_pre"],
              "clean": plan.paths["clean"], "robust": plan.paths[name],
              "model": spec, "selection": {"first_k": plan.first_k,
                                           "include": plan.include},
              "coefficients": "linear"})
    sig_lib.check_fits(target["params"], sigs[name], "the target model")
  return sigs


def _bn_data(config: Any, plan: _Plan, target: dict[str, Any],
             classes: str) -> corrupted.CorruptedBatches | None:
  """The training images that re-estimate BatchNorm statistics, or None
  when the target has no BatchNorm or keeps its statistics."""
  if not jax.tree.leaves(target["batch_stats"]) or plan.bn_mode == "keep_a":
    return None
  ds = config.dataset
  train = data.subset(data.load_split(
      ds.name, "train", source=ds.source,
      data_dir=ds.get("data_dir") or None), classes)
  return corrupted.CorruptedBatches(
      train, plan.severity, int(config.get("seed", 0)),
      int(config.get("bn_batches", 0)), int(config.get("bn_batch_size", 128)))


def _describe(plan: _Plan, sigs, spec, target_spec, target, files, classes,
              n: int, train_batches) -> dict[str, Any]:
  """The report's keys that need no evaluation."""
  report: dict[str, Any] = {
      "theta_pre": plan.paths["theta_pre"], "clean": plan.paths["clean"],
      "robust": {c: plan.paths[c] for c in plan.names},
      "target": plan.target_path,
      "transfer": plan.target_path != plan.paths["clean"], "model": spec,
      "target_model": target_spec, "bits": plan.bits,
      "severity": plan.severity, "layers": sigs[plan.names[0]].paths,
      "batch_stats": plan.bn_mode,
      "coefficients": "linear (the reference squares its weight; see "
                      "docs/rws.md)", "num_examples": n,
      "classes": classes, "signature_files": files}
  if plan.bn_mode == "average":
    # What 'average' ships besides the signatures: the robust models' mean
    # of these tensors (none in a BN-free model).
    report["averaged_params"] = int(sum(
        np.size(v) for p, v in trees.flatten(target["params"]).items()
        if rws_bn.is_averaged(p)))
  if train_batches is not None:
    report["bn_reestimation"] = {
        "data": (f"training split corrupted at severity {plan.severity}, "
                 "each corruption patched in" if plan.bn_mode == "average"
                 else "clean training split"),
        "images_per_corruption": train_batches.images_per_corruption,
        "batch_size": train_batches.batch_size}
  return report


def _per_corruption(plan: _Plan, ev: _Evaluator, base, patched, loaded
                    ) -> dict[str, Any]:
  """``scaling``, ``per_corruption`` and ``cross`` (one line each)."""
  clean_target = ev.accuracy(base, "clean")
  per, scaling, cross = {}, {}, {}
  for c in plan.names:
    scaling[c] = []
    for coef in plan.coefficients:
      v = base if coef == 0.0 else patched([c], [coef])
      point = {"coefficient": coef, "corrupted_acc": ev.accuracy(v, c),
               "clean_acc": clean_target if coef == 0.0 else
               ev.accuracy(v, "clean")}
      scaling[c].append(point)
      logging.info("rws %s coefficient %.2f: corrupted %.2f%% | clean %.2f%%",
                   c, coef, 100 * point["corrupted_acc"],
                   100 * point["clean_acc"])
    one = patched([c], [1.0])
    own = plan.target_path == plan.paths["clean"]
    per[c] = {"target_acc": ev.accuracy(base, c),
              "patched_acc": ev.accuracy(one, c),
              "robust_acc": (ev.accuracy(common.variables_of(loaded[c]), c)
                             if own else None),
              "patched_clean_acc": ev.accuracy(one, "clean")}
    cross[c] = {other: ev.accuracy(one, other) for other in plan.names}
    r = per[c]["robust_acc"]
    logging.info("rws %s: target %.2f%% -> patched %.2f%% (robust model %s) "
                 "| clean after patch %.2f%%", c, 100 * per[c]["target_acc"],
                 100 * per[c]["patched_acc"],
                 "n/a" if r is None else f"{100 * r:.2f}%",
                 100 * per[c]["patched_clean_acc"])
  return {"target_clean_acc": clean_target, "per_corruption": per,
          "scaling": scaling, "cross": cross}


def _composition(plan: _Plan, ev: _Evaluator, patched) -> list[dict]:
  """Pairs (and, for 3+, all) of the signatures added together."""
  rows = []
  groups = [list(g) for g in itertools.combinations(plan.names, 2)]
  if len(plan.names) > 2:
    groups.append(list(plan.names))
  for group in groups:
    coefs = ([1.0] * len(group) if plan.composition == "linear" else
             sig_lib.reference_coefficients(1.0, len(group)))
    v = patched(group, coefs)
    row = {"signatures": group, "coefficients": coefs,
           "clean_acc": ev.accuracy(v, "clean"),
           "corrupted_acc": {c: ev.accuracy(v, c) for c in group}}
    rows.append(row)
    logging.info("rws compose %s (x%.3g): clean %.2f%% | %s",
                 "+".join(group), coefs[0], 100 * row["clean_acc"],
                 " ".join(f"{c} {100 * a:.2f}%"
                          for c, a in row["corrupted_acc"].items()))
  return rows


def _load(config: Any, plan: _Plan):
  """The checkpoints, the target's classes and evaluation split."""
  loaded = {k: checkpoint.load(p) for k, p in plan.paths.items()}
  target = checkpoint.load(plan.target_path)
  # The fine-tuned models must match each other; theta_pre only in the kept
  # layers (checked by extract), as its head may have another class count.
  for key in plan.names:
    trees.check_compatible(loaded["clean"]["params"], loaded[key]["params"],
                           f"the clean model and {key}")
  classes = target_classes(config.dataset, target["meta"])
  split = common.load_eval_split(config.dataset, classes)
  target_spec = target["meta"]["model"]
  if split.num_classes != target_spec["num_classes"]:
    raise ConfigError(f"the target model has {target_spec['num_classes']} "
                      f"classes but dataset '{config.dataset.name}' (classes "
                      f"'{classes or 'all'}') has {split.num_classes}; set "
                      "--config.dataset.classes to the target's classes")
  n = int(config.eval.num_examples) or len(split)
  if not 0 < n <= len(split):
    raise ConfigError(f"eval.num_examples={n} but the split holds "
                      f"{len(split)} points; ask for at most that many")
  return loaded, target, classes, split, n


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Extracts, saves and measures the signatures; returns the report."""
  start = time.time()
  plan = _plan(config)
  loaded, target, classes, split, n = _load(config, plan)
  spec, target_spec = loaded["clean"]["meta"]["model"], target["meta"]["model"]
  target_model = models.build_model(target_spec)
  order = common.layer_order(models.build_model(spec), split.images.shape[1:])
  sigs = _extract(plan, loaded, target, spec, order)  # checks the fit too
  mesh = common.mesh_of(config)
  train_batches = _bn_data(config, plan, target, classes)
  robust_vars = [common.variables_of(loaded[c]) for c in plan.names]
  base = common.variables_of(target)

  def patched(group, coefs):
    """The target patched with ``group``'s signatures; 'average'
    re-estimates the statistics on those corruptions' data."""
    batches = None if train_batches is None else train_batches(
        list(group) if plan.bn_mode == "average" else ["clean"])
    return rws_bn.patch_variables(
        base, [sigs[c] for c in group], coefs, batch_stats=plan.bn_mode,
        stats_fn=batchnorm.flax_stats_fn(target_model.apply),
        batches=batches, robust_variables=robust_vars)

  # Validated: from here on files are written.
  files = {c: fileformat.save(sigs[c], os.path.join(workdir, "signatures",
                                                    c)) for c in plan.names}
  report = _describe(plan, sigs, spec, target_spec, target, files,
                     list(data.parse_classes(classes, data.DATASETS[
                         config.dataset.name].num_classes)
                          or range(split.num_classes)), n, train_batches)
  profiles = {c: analysis.depth_profile(loaded["clean"]["params"],
                                        loaded[c]["params"], order)
              for c in plan.names}
  # Lists, so the depth order survives JSON writers that sort keys.
  report["depth_profile"] = {c: [dict(layer=layer, **v)
                                 for layer, v in prof.items()]
                             for c, prof in profiles.items()}
  sim = analysis.similarity_matrix([sigs[c] for c in plan.names])
  report["similarity"] = {"names": plan.names, "matrix":
                          sim.round(4).tolist()}
  report["storage"] = {c: analysis.storage(sigs[c], target["params"],
                                           fileformat.file_bytes(files[c]))
                       for c in plan.names}
  ev = _Evaluator(target_model, split, mesh, n, int(config.eval.batch_size),
                  plan.severity, int(config.get("seed", 0)))
  report.update(_per_corruption(plan, ev, base, patched, loaded))
  report["composition"] = _composition(plan, ev, patched)
  per = report["per_corruption"]
  for key in ("patched_acc", "target_acc", "patched_clean_acc"):
    report[key] = float(np.mean([per[c][key] for c in plan.names]))
  report["wall_time_s"] = round(time.time() - start, 1)
  write_report(workdir, report)
  if jax.process_index() == 0:
    _plots(workdir, profiles, sim, plan, sigs, report["scaling"])
  return report


def _plots(workdir: str, profiles, sim, plan: _Plan, sigs, scaling) -> None:
  analysis.plot_depth_profile(
      profiles, os.path.join(workdir, "depth_profile.png"),
      # first_k counts BN layers too, which 'average' leaves out of the
      # signature.
      kept=plan.first_k or len({trees.layer_of(p)
                                for p in sigs[plan.names[0]].paths}))
  analysis.plot_similarity(sim, plan.names,
                           os.path.join(workdir, "similarity.png"))
  analysis.plot_scaling(scaling, os.path.join(workdir, "scaling.png"))
