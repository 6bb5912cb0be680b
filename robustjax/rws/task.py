"""The ``rws_finetune`` and ``rws`` tasks behind ``launch.py``.

``rws_finetune``: fine-tune from ``config.init_from`` (theta_pre). The
workdir is seeded with theta_pre's weights and a fresh optimizer state as
its step-0 checkpoint, then the ordinary training loop resumes from it, so
the clean model and every corruption model start from the same weights
(and, being one model class, share its input normalisation).

``rws``: from theta_pre, the clean model and the robust models, extract and
save one signature per corruption, then measure:

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

Writes ``WORKDIR/signatures/<corruption>.rws``, ``WORKDIR/report.json``,
``WORKDIR/depth_profile.png``, ``similarity.png``, ``scaling.png``.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from robustjax import checkpoint, data, evaluation, sharding
from robustjax.data import corrupted, corruptions
from robustjax.errors import ConfigError
from robustjax.metrics import write_report
from robustjax.rws import analysis, batchnorm, fileformat
from robustjax.rws import signatures as sig_lib
from robustjax.weightspace import interpolate, trees


# ------------------------------------------------------------- finetune

def run_finetune(config: Any, workdir: str) -> dict[str, Any]:
  """Seeds ``workdir`` with theta_pre (``config.init_from``) as step 0 and
  trains with ``train_and_evaluate``. A workdir that already has
  checkpoints simply resumes."""
  from robustjax.training import loop, optimizer, step as step_lib
  if not config.get("init_from"):
    raise ConfigError("set --config.init_from to the theta_pre workdir (or "
                      "step folder) every RWS model starts from")
  loop.validate(config)
  source = checkpoint.resolve(str(config.init_from))
  pre_spec = checkpoint.read_meta(source)["model"]
  want = {"name": config.model.name, "width": float(config.model.width)}
  if want != {k: pre_spec[k] for k in ("name", "width")}:
    raise ConfigError(
        f"init_from holds model {pre_spec['name']} width "
        f"{pre_spec['width']:g} but the config asks for {want['name']} width "
        f"{want['width']:g}; set --config.model.name/--config.model.width to "
        "the theta_pre model")
  ckpt_dir = os.path.join(workdir, checkpoint.LATEST_DIR)
  if not checkpoint.has_checkpoint(ckpt_dir):
    pre = checkpoint.load(source)
    # The optimizer state's structure does not depend on the step count
    # (the schedule is a function of the step), so any count builds it.
    tx, _ = optimizer.make_optimizer(config.optimizer, 1000)
    params = jax.tree.map(jax.numpy.asarray, pre["params"])
    state = step_lib.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32), params=params,
        batch_stats=jax.tree.map(jax.numpy.asarray, pre["batch_stats"]),
        opt_state=tx.init(params))
    meta = {"model": pre_spec, "dataset": config.dataset.to_dict(),
            "objective": config.objective.to_dict(),
            "config": config.to_json_best_effort(),
            "init_from": source}
    ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=2, async_save=False)
    ckpt.save(0, state.to_dict(), meta)
    ckpt.close()
    logging.info("seeded %s with theta_pre %s", ckpt_dir, source)
  report = loop.train_and_evaluate(config, workdir)
  report["init_from"] = source
  write_report(workdir, report)
  return report


# ----------------------------------------------------------------- rws

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


def _order(model, image_shape) -> list[str]:
  return trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), np.zeros((1, *image_shape), np.float32),
      train=False))


class _Evaluator:
  """Accuracy of variables on fixed clean / corrupted point sets, with one
  compiled step (the corrupted copies are made once, with the same keys as
  ``evaluation.evaluate_corruptions``)."""

  def __init__(self, model, split, mesh, n: int, batch_size: int,
               severity: int, seed: int):
    self.split = data.ArraySplit(split.images[:n], split.labels[:n],
                                 split.num_classes, split.name)
    self.mesh, self.n, self.batch_size = mesh, n, batch_size
    self.severity, self.seed = severity, seed
    self.step = evaluation.make_corruption_step_clean(model, mesh)
    self._copies: dict[str, data.ArraySplit] = {"clean": self.split}

  def points(self, name: str) -> data.ArraySplit:
    if name not in self._copies:
      images = corrupted.corrupt_images(
          self.split.images, np.arange(self.n), name, self.severity,
          self.seed)
      self._copies[name] = data.ArraySplit(
          images, self.split.labels, self.split.num_classes, self.split.name)
    return self._copies[name]

  def accuracy(self, variables, name: str) -> float:
    variables = sharding.put_replicated(variables, self.mesh)
    correct = count = 0.0
    for batch in data.eval_batches(self.points(name), self.batch_size,
                                   self.mesh):
      sums = self.step(variables, batch, None)
      correct += float(sums["correct"])
      count += float(sums["count"])
    return correct / max(count, 1.0)


def _bn_batches(config: Any, mesh):
  return data.clean_float_batches(config.dataset, int(config.bn_batch_size),
                                  int(config.bn_batches),
                                  int(config.get("seed", 0)), mesh)


def _variables(restored) -> dict[str, Any]:
  return {"params": restored["params"], "batch_stats": restored["batch_stats"]}


def run_rws(config: Any, workdir: str) -> dict[str, Any]:
  """The ``rws`` task body; see the module docstring."""
  from robustjax.training.loop import build_model  # local: heavy import
  start = time.time()
  # --- validate everything before a file is written.
  for key in ("theta_pre", "clean"):
    if not config.get(key):
      raise ConfigError(f"set --config.{key} to a training workdir or step "
                        "folder")
  robust_paths = parse_robust(config.robust)
  paths = {"theta_pre": checkpoint.resolve(str(config.theta_pre)),
           "clean": checkpoint.resolve(str(config.clean))}
  for name, path in robust_paths.items():
    paths[name] = checkpoint.resolve(path)
  target_path = checkpoint.resolve(str(config.target)) if config.get(
      "target") else paths["clean"]
  bits = sig_lib.check_bits(int(config.get("bits", 0)))
  coefficients = [float(c) for c in config.coefficients]
  if not coefficients or not all(np.isfinite(coefficients)):
    raise ConfigError("coefficients must be a non-empty list of finite "
                      "numbers, e.g. (0, 0.5, 1.0, 1.5)")
  bn_mode = str(config.get("batch_stats", "keep"))
  if bn_mode not in batchnorm.BATCH_STATS:
    raise ConfigError(f"batch_stats='{bn_mode}' is not one of "
                      f"{', '.join(batchnorm.BATCH_STATS)}")
  composition_mode = str(config.get("composition", "linear"))
  if composition_mode not in ("linear", "reference"):
    raise ConfigError(f"composition='{composition_mode}' is not 'linear' "
                      "(coefficient 1 each) or 'reference' ((1/K)^2 each, "
                      "as the reference code's --alpha 1)")
  severity = int(config.severity)
  corruptions.check_severity(severity)
  include = [p.strip() for p in str(config.get("include", "")).split(",")
             if p.strip()] or None
  first_k = None if include else int(config.first_k)
  loaded = {k: checkpoint.load(p) for k, p in paths.items()}
  target = checkpoint.load(target_path)
  spec = loaded["theta_pre"]["meta"]["model"]
  for key, restored in loaded.items():
    trees.check_compatible(loaded["theta_pre"]["params"], restored["params"],
                           f"theta_pre and {key}")
  ds = config.dataset
  split = data.load_split(ds.name, ds.get("split", "test"), source=ds.source,
                          data_dir=ds.get("data_dir") or None)
  target_spec = target["meta"]["model"]
  if split.num_classes != target_spec["num_classes"]:
    raise ConfigError(f"the target model has {target_spec['num_classes']} "
                      f"classes but dataset '{ds.name}' has "
                      f"{split.num_classes}; evaluate on the target's dataset")
  n = int(config.eval.num_examples) or len(split)
  if not 0 < n <= len(split):
    raise ConfigError(f"eval.num_examples={n} but the split holds "
                      f"{len(split)} points; ask for at most that many")
  model = build_model(spec)
  target_model = build_model(target_spec)
  image_shape = tuple(split.images.shape[1:])
  order = _order(model, image_shape)
  names = list(robust_paths)
  # Extraction validates the layer selection and the target fit: still
  # nothing written.
  sigs = {}
  for name in names:
    sigs[name] = sig_lib.extract(
        loaded["theta_pre"]["params"], loaded["clean"]["params"],
        loaded[name]["params"], first_k=first_k, include=include,
        bits=bits, order=order,
        meta={"corruption": name, "severity": severity,
              "theta_pre": paths["theta_pre"], "clean": paths["clean"],
              "robust": paths[name], "model": spec,
              "selection": {"first_k": first_k, "include": include},
              "coefficients": "linear"})
    sig_lib.check_fits(target["params"], sigs[name], "the target model")
  mesh = sharding.make_mesh(config.get("num_devices") or None)
  stats_fn = interpolate.flax_stats_fn(target_model.apply)
  has_bn = bool(jax.tree.leaves(target["batch_stats"]))
  bn_batches = _bn_batches(config, mesh) if (
      has_bn and bn_mode == "recompute") else None
  robust_vars = [_variables(loaded[c]) for c in names]

  # --- from here on files are written.
  sig_dir = os.path.join(workdir, "signatures")
  files = {c: fileformat.save(sigs[c], os.path.join(sig_dir, c))
           for c in names}
  ev = _Evaluator(target_model, split, mesh, n, int(config.eval.batch_size),
                  severity, int(config.get("seed", 0)))
  base = _variables(target)

  def patched(sig_list, coefs):
    return batchnorm.patch_variables(
        base, sig_list, coefs, batch_stats=bn_mode, stats_fn=stats_fn,
        batches=bn_batches, robust_variables=robust_vars)

  report: dict[str, Any] = {
      "theta_pre": paths["theta_pre"], "clean": paths["clean"],
      "robust": {c: paths[c] for c in names}, "target": target_path,
      "transfer": target_path != paths["clean"], "model": spec,
      "target_model": target_spec, "bits": bits, "severity": severity,
      "layers": sigs[names[0]].paths, "batch_stats": bn_mode,
      "coefficients": "linear (the reference squares its weight; see "
                      "docs/rws.md)", "num_examples": n,
      "signature_files": files}
  profiles = {c: analysis.depth_profile(loaded["clean"]["params"],
                                        loaded[c]["params"], order)
              for c in names}
  # Lists, so the depth order survives JSON writers that sort keys.
  report["depth_profile"] = {c: [dict(layer=layer, **v)
                                 for layer, v in prof.items()]
                             for c, prof in profiles.items()}
  sim = analysis.similarity_matrix([sigs[c] for c in names])
  report["similarity"] = {"names": names, "matrix": sim.round(4).tolist()}
  report["storage"] = {c: analysis.storage(sigs[c], target["params"],
                                           fileformat.file_bytes(files[c]))
                       for c in names}

  clean_target = ev.accuracy(base, "clean")
  report["target_clean_acc"] = clean_target
  per, scaling, cross = {}, {}, {}
  for c in names:
    curve = []
    for coef in coefficients:
      v = base if coef == 0.0 else patched([sigs[c]], [coef])
      point = {"coefficient": coef, "corrupted_acc": ev.accuracy(v, c),
               "clean_acc": clean_target if coef == 0.0 else
               ev.accuracy(v, "clean")}
      curve.append(point)
      logging.info("rws %s coefficient %.2f: corrupted %.2f%% | clean %.2f%%",
                   c, coef, 100 * point["corrupted_acc"],
                   100 * point["clean_acc"])
    scaling[c] = curve
    one = patched([sigs[c]], [1.0])
    per[c] = {"target_acc": ev.accuracy(base, c),
              "patched_acc": ev.accuracy(one, c),
              "robust_acc": (ev.accuracy(_variables(loaded[c]), c)
                             if target_path == paths["clean"] else None),
              "patched_clean_acc": ev.accuracy(one, "clean")}
    cross[c] = {other: ev.accuracy(one, other) for other in names}
    r = per[c]["robust_acc"]
    logging.info("rws %s: target %.2f%% -> patched %.2f%% (robust model %s) "
                 "| clean after patch %.2f%%", c, 100 * per[c]["target_acc"],
                 100 * per[c]["patched_acc"],
                 "n/a" if r is None else f"{100 * r:.2f}%",
                 100 * per[c]["patched_clean_acc"])
  report["per_corruption"] = per
  report["scaling"] = scaling
  report["cross"] = cross
  composition = []
  groups = [list(g) for g in itertools.combinations(names, 2)]
  if len(names) > 2:
    groups.append(list(names))
  for group in groups:
    coefs = ([1.0] * len(group) if composition_mode == "linear" else
             sig_lib.reference_coefficients(1.0, len(group)))
    v = patched([sigs[c] for c in group], coefs)
    row = {"signatures": group, "coefficients": coefs,
           "clean_acc": ev.accuracy(v, "clean"),
           "corrupted_acc": {c: ev.accuracy(v, c) for c in group}}
    composition.append(row)
    logging.info("rws compose %s (x%.3g): clean %.2f%% | %s",
                 "+".join(group), coefs[0],
                 100 * row["clean_acc"], " ".join(
                     f"{c} {100 * a:.2f}%"
                     for c, a in row["corrupted_acc"].items()))
  report["composition"] = composition
  report["patched_acc"] = float(np.mean([per[c]["patched_acc"]
                                         for c in names]))
  report["target_acc"] = float(np.mean([per[c]["target_acc"] for c in names]))
  report["patched_clean_acc"] = float(np.mean(
      [per[c]["patched_clean_acc"] for c in names]))
  report["wall_time_s"] = round(time.time() - start, 1)
  write_report(workdir, report)
  if jax.process_index() == 0:
    analysis.plot_depth_profile(profiles, os.path.join(
        workdir, "depth_profile.png"),
        kept=len({trees.layer_of(p) for p in sigs[names[0]].paths}))
    analysis.plot_similarity(sim, names, os.path.join(workdir,
                                                      "similarity.png"))
    analysis.plot_scaling(scaling, os.path.join(workdir, "scaling.png"))
  return report
