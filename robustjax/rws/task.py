"""The ``rws_finetune`` and ``rws`` tasks behind ``launch.py``.

``rws_finetune``: fine-tune from ``config.init_from`` (theta_pre). The
workdir is seeded with theta_pre's weights and a fresh optimizer state as
its step-0 checkpoint, then the ordinary training loop resumes from it, so
the clean model and every corruption model start from the same weights
(and, being one model class, share its input normalisation). When the data
has another class count than theta_pre (``dataset.classes``), the output
layer is re-initialised (``start_variables``); every other layer is
theta_pre's.

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

BatchNorm (``batch_stats``, default ``'average'``, the reference's rule;
``rws.batchnorm``): BN and shortcut tensors are the robust models' mean and
are left out of the signatures; on a model with BatchNorm the running
statistics are then re-estimated on the training split corrupted with each
corruption patched in (``bn_batches`` batches of ``bn_batch_size`` per
corruption; 0 = one pass over the split, as the reference), blended with the
robust mean by ``rws.batchnorm.reference_alpha`` of the coefficients. A
BN-free model (VGG-16) has none of these tensors: nothing changes there.
``'keep'`` leaves the target's; ``'recompute'`` re-estimates on the clean
training images (same batches).

With ``target`` (transfer), the signatures patch another clean model from
the same theta_pre, evaluated on the classes its checkpoint recorded
(``target_dataset``); its class count may differ, as the head is never
patched. theta_pre has to match the other models only in the kept layers.

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

def start_variables(pre: dict[str, Any], model, spec: dict[str, Any],
                    image_shape: tuple[int, int, int], seed: int
                    ) -> tuple[dict[str, Any], list[str]]:
  """theta_pre's variables for ``model``, whose class count may differ.

  Every layer is theta_pre's, except the output layer when its tensors have
  other shapes (another class count): that whole layer (kernel and bias)
  comes from a fresh ``model.init`` with key ``seed``, as a new head in
  transfer learning. Any other difference means another architecture.

  Args:
    pre: theta_pre's ``{"params", "batch_stats"}``.
    model: the network to fine-tune (``spec``'s class count).
    spec: its model spec, for error messages.
    image_shape: ``(H, W, C)`` of one input.
    seed: the init key of the fresh layer.

  Returns:
    ``({"params", "batch_stats"}, re-initialised layer paths)``, e.g.
    ``[]`` or ``["head/dense"]``.
  """
  fresh = jax.jit(lambda k: model.init(
      k, np.zeros((1, *image_shape), np.float32), train=False))(
          jax.random.key(seed))
  fresh = {"params": fresh["params"],
           "batch_stats": fresh.get("batch_stats", {})}
  flat_pre, flat_new = trees.flatten(pre), trees.flatten(fresh)
  if set(flat_pre) != set(flat_new):
    raise ConfigError(
        f"theta_pre's tensors differ from those of model {spec['name']} "
        f"width {spec['width']:g}: {trees.mismatches(pre, fresh)[0]}; "
        "fine-tune from a theta_pre of the same architecture")
  # Paths are "params/<layer>/<leaf>": strip the collection for the layer.
  changed = sorted({trees.layer_of(p.split("/", 1)[1]) for p in flat_new
                    if np.shape(flat_pre[p]) != np.shape(flat_new[p])})
  head = trees.layers(fresh["params"], _order(model, image_shape))[-1]
  if changed not in ([], [head]):
    raise ConfigError(
        f"theta_pre differs from model {spec['name']} width "
        f"{spec['width']:g} with {spec['num_classes']} classes in "
        f"{', '.join(changed)}, not only in the output layer {head}; "
        "fine-tune from a theta_pre of the same architecture")
  merged = trees.unflatten({
      p: flat_new[p] if trees.layer_of(p.split("/", 1)[1]) in changed
      else flat_pre[p] for p in flat_new})
  return ({"params": merged["params"],
           "batch_stats": merged.get("batch_stats", {})}, changed)


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
  # The class count comes from the data (dataset.classes may keep a subset);
  # it may differ from theta_pre's, and then the head is re-initialised.
  spec = dict(pre_spec, num_classes=data.sources.config_num_classes(
      config.dataset))
  ckpt_dir = os.path.join(workdir, checkpoint.LATEST_DIR)
  if not checkpoint.has_checkpoint(ckpt_dir):
    pre = checkpoint.load(source)
    variables, fresh_layers = start_variables(
        _variables(pre), loop.build_model(spec), spec,
        data.DATASETS[config.dataset.name].image_shape, int(config.seed))
    # The optimizer state's structure does not depend on the step count
    # (the schedule is a function of the step), so any count builds it.
    tx, _ = optimizer.make_optimizer(config.optimizer, 1000)
    params = jax.tree.map(jax.numpy.asarray, variables["params"])
    state = step_lib.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32), params=params,
        batch_stats=jax.tree.map(jax.numpy.asarray,
                                 variables["batch_stats"]),
        opt_state=tx.init(params))
    meta = {"model": spec, "dataset": config.dataset.to_dict(),
            "objective": config.objective.to_dict(),
            "config": config.to_json_best_effort(),
            "init_from": source, "reinitialised": fresh_layers}
    ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=2, async_save=False)
    ckpt.save(0, state.to_dict(), meta)
    ckpt.close()
    logging.info("seeded %s with theta_pre %s%s", ckpt_dir, source,
                 f" (re-initialised {', '.join(fresh_layers)} for "
                 f"{spec['num_classes']} classes)" if fresh_layers else "")
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


class CorruptedTrainBatches:
  """Float batches of the training split, corrupted with given corruptions
  (or ``"clean"``), for re-estimating BatchNorm statistics
  (``batch_stats='average'``; ``'recompute'`` uses the clean images).

  Image i of the split is corrupted with the key the training data of the
  corruption models used (``data.corrupted.corruption_key``), so with
  ``num_batches=0`` a corruption's batches are that model's training images,
  un-augmented. Each corrupted copy is made once (uint8) and reused.

  Args:
    split: the (clean) training split, uint8 ``[N, H, W, C]``.
    severity, seed: of the corruptions.
    num_batches: batches per corruption; 0 = all of ``split`` (the last
      batch may be smaller), else a fixed random subset of
      ``num_batches * batch_size`` images.
    batch_size: images per batch.
  """

  def __init__(self, split: data.ArraySplit, severity: int, seed: int,
               num_batches: int, batch_size: int):
    if num_batches < 0 or batch_size < 1:
      raise ConfigError(f"bn_batches={num_batches} and bn_batch_size="
                        f"{batch_size}: use bn_batches >= 0 (0 = one pass) "
                        "and bn_batch_size >= 1")
    n = len(split)
    if num_batches:
      rows = np.sort(np.random.default_rng([seed, 2]).permutation(n)[
          :min(n, num_batches * batch_size)])
    else:
      rows = np.arange(n)
    self.images, self.rows = split.images[rows], rows
    self.severity, self.seed, self.batch_size = severity, seed, batch_size
    self._copies: dict[str, np.ndarray] = {}

  @property
  def images_per_corruption(self) -> int:
    return len(self.rows)

  def __call__(self, names: list[str]):
    """One pass over each corruption's images in turn (``"clean"``: the
    clean images): float32 ``[B, H, W, C]`` in [0, 1]."""
    for name in names:
      if name == "clean":
        self._copies[name] = self.images
      elif name not in self._copies:
        self._copies[name] = corrupted.corrupt_images(
            self.images, self.rows, name, self.severity, self.seed)
      images = self._copies[name]
      for start in range(0, len(images), self.batch_size):
        yield images[start:start + self.batch_size].astype(
            np.float32) / 255.0


def target_dataset(dataset_cfg: Any, target_meta: dict[str, Any]):
  """``dataset_cfg`` with ``classes`` set to the target model's classes.

  The target is evaluated on the classes it was trained on: those its
  checkpoint recorded (``meta["dataset"]["classes"]``, written by the
  training loop) unless ``dataset_cfg.classes`` names them; naming other
  classes than the recorded ones is refused, since label i would then mean
  another class than the one the head learnt.
  """
  import ml_collections  # local: only this copy of the block needs it
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
  out = ml_collections.ConfigDict(dataset_cfg.to_dict())
  out.classes = wanted or recorded
  return out


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
  bn_mode = str(config.get("batch_stats", "average"))
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
  # The fine-tuned models must match each other; theta_pre only in the
  # kept layers (checked by extract), as its head may have another class
  # count (a start trained on other labels).
  spec = loaded["clean"]["meta"]["model"]
  for key in robust_paths:
    trees.check_compatible(loaded["clean"]["params"], loaded[key]["params"],
                           f"the clean model and {key}")
  ds = target_dataset(config.dataset, target["meta"])
  split = data.sources.subset_from_config(data.load_split(
      ds.name, ds.get("split", "test"), source=ds.source,
      data_dir=ds.get("data_dir") or None), ds)
  target_spec = target["meta"]["model"]
  if split.num_classes != target_spec["num_classes"]:
    raise ConfigError(f"the target model has {target_spec['num_classes']} "
                      f"classes but dataset '{ds.name}' (classes "
                      f"'{ds.classes or 'all'}') has {split.num_classes}; "
                      "set --config.dataset.classes to the target's classes")
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
        # 'average' takes BN and shortcut tensors from the robust mean, so
        # the signature leaves them out (the reference never projects them).
        exclude=(batchnorm.AVERAGED_PATTERNS if bn_mode == "average"
                 else ()),
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
  train_batches = None
  if has_bn and bn_mode != "keep":
    train = data.sources.subset_from_config(data.load_split(
        ds.name, "train", source=ds.source,
        data_dir=ds.get("data_dir") or None), ds)
    train_batches = CorruptedTrainBatches(
        train, severity, int(config.get("seed", 0)),
        int(config.get("bn_batches", 0)),
        int(config.get("bn_batch_size", 128)))
  robust_vars = [_variables(loaded[c]) for c in names]

  # --- from here on files are written.
  sig_dir = os.path.join(workdir, "signatures")
  files = {c: fileformat.save(sigs[c], os.path.join(sig_dir, c))
           for c in names}
  ev = _Evaluator(target_model, split, mesh, n, int(config.eval.batch_size),
                  severity, int(config.get("seed", 0)))
  base = _variables(target)

  def patched(group, coefs):
    """The target patched with the signatures of the corruptions in
    ``group``; 'average' re-estimates on those corruptions' data."""
    batches = None
    if train_batches is not None:
      batches = train_batches(list(group) if bn_mode == "average"
                              else ["clean"])
    return batchnorm.patch_variables(
        base, [sigs[c] for c in group], coefs, batch_stats=bn_mode,
        stats_fn=stats_fn, batches=batches, robust_variables=robust_vars)

  report: dict[str, Any] = {
      "theta_pre": paths["theta_pre"], "clean": paths["clean"],
      "robust": {c: paths[c] for c in names}, "target": target_path,
      "transfer": target_path != paths["clean"], "model": spec,
      "target_model": target_spec, "bits": bits, "severity": severity,
      "layers": sigs[names[0]].paths, "batch_stats": bn_mode,
      "coefficients": "linear (the reference squares its weight; see "
                      "docs/rws.md)", "num_examples": n,
      "classes": list(data.parse_classes(ds.classes, data.DATASETS[
          ds.name].num_classes) or range(split.num_classes)),
      "signature_files": files}
  if bn_mode == "average":
    # What 'average' ships besides the signatures: the robust models' mean
    # of these tensors (none in a BN-free model).
    report["averaged_params"] = int(sum(
        np.size(v) for p, v in trees.flatten(target["params"]).items()
        if batchnorm.is_averaged(p)))
  if train_batches is not None:
    report["bn_reestimation"] = {
        "data": (f"training split corrupted at severity {severity}, each "
                 "corruption patched in" if bn_mode == "average" else
                 "clean training split"),
        "images_per_corruption": train_batches.images_per_corruption,
        "batch_size": train_batches.batch_size}
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
      v = base if coef == 0.0 else patched([c], [coef])
      point = {"coefficient": coef, "corrupted_acc": ev.accuracy(v, c),
               "clean_acc": clean_target if coef == 0.0 else
               ev.accuracy(v, "clean")}
      curve.append(point)
      logging.info("rws %s coefficient %.2f: corrupted %.2f%% | clean %.2f%%",
                   c, coef, 100 * point["corrupted_acc"],
                   100 * point["clean_acc"])
    scaling[c] = curve
    one = patched([c], [1.0])
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
    v = patched(group, coefs)
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
        # first_k counts BN layers too, which 'average' leaves out of the
        # signature.
        kept=first_k or len({trees.layer_of(p)
                             for p in sigs[names[0]].paths}))
    analysis.plot_similarity(sim, names, os.path.join(workdir,
                                                      "similarity.png"))
    analysis.plot_scaling(scaling, os.path.join(workdir, "scaling.png"))
  return report
