"""What the tasks that read checkpoints share.

Every function here translates config blocks into the library's plain
arguments: restoring a checkpoint with its model and evaluation split
(``restore``), checking that variables fit a model (``check_fit``), the
attack of a config block (``attack``), the OOD block (``ood_config``,
``evaluate_ood``), clean training batches for BatchNorm re-estimation
(``bn_batches``), saving a model's variables as a checkpoint
(``save_variables``), the order of a model's layers (``layer_order``) and
the two checkpoints of an output-space mixture (``restore_pair``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np

from robustjax import attacks, checkpoint, data, evaluation, models, sharding
from robustjax.errors import ConfigError

Variables = dict[str, Any]  # {"params", "batch_stats"}


@dataclasses.dataclass
class Restored:
  """A checkpoint ready to evaluate.

  variables: ``{"params", "batch_stats"}``; model: its Flax module;
  spec: the saved model spec; meta: the saved metadata; step: the
  checkpoint's step; split: the evaluation split (the classes the model was
  trained on); num_examples: how many of its points to use.
  """
  variables: Variables
  model: Any
  spec: dict[str, Any]
  meta: dict[str, Any]
  step: int
  split: data.ArraySplit
  num_examples: int


def variables_of(tree: Mapping[str, Any]) -> Variables:
  """``{"params", "batch_stats"}`` of a restored checkpoint tree."""
  return {"params": tree["params"], "batch_stats": tree.get("batch_stats",
                                                            {})}


def mesh_of(config: Any):
  """The device mesh of ``config.num_devices`` (0 = every device)."""
  return sharding.make_mesh(config.get("num_devices") or None)


def attack(block: Any, where: str = "eval.attack") -> attacks.Attack:
  """The attack of a config block, with ``where`` named in its errors."""
  try:
    return attacks.build(block)
  except ConfigError as err:
    raise ConfigError(f"{where}: {err}") from None


def load_eval_split(dataset_cfg: Any, classes: str = "") -> data.ArraySplit:
  """``dataset_cfg``'s split (``dataset.split``, default test), restricted
  to ``classes`` (a ``data.parse_classes`` selection; empty = all)."""
  split = data.load_split(dataset_cfg.name, dataset_cfg.get("split", "test"),
                          source=dataset_cfg.source,
                          data_dir=dataset_cfg.get("data_dir") or None)
  return data.subset(split, classes)


def trained_classes(dataset_cfg: Any, meta: Mapping[str, Any]) -> str:
  """The classes to evaluate a checkpoint on: ``dataset_cfg.classes`` if
  set, else those the checkpoint's model was trained on (a model trained on
  a class subset, e.g. RWS transfer's ``5-9``, is scored on those classes,
  relabelled the same way)."""
  trained = meta.get("dataset", {}) or {}
  return dataset_cfg.get("classes", "") or (
      trained.get("classes", "") if trained.get("name") == dataset_cfg.name
      else "")


def restore(config: Any, num_examples: int, path: str | None = None
            ) -> Restored:
  """The checkpoint ``path`` (default ``config.checkpoint_path``; step
  ``config.step``, ``config.best``), its model and its evaluation split.

  ``num_examples`` 0 means the whole split. Raises ConfigError (before any
  work) for a missing checkpoint, a dataset whose class count differs from
  the model's, more points than the split holds, or variables that do not
  fit the model.
  """
  path = path or config.get("checkpoint_path")
  if not path:
    raise ConfigError("set --config.checkpoint_path to a training workdir or "
                      "a checkpoint step folder")
  tree = checkpoint.load(path, int(config.get("step", 0)) or None,
                         best=bool(config.get("best", False)))
  spec, ds = tree["meta"]["model"], config.dataset
  split = load_eval_split(ds, trained_classes(ds, tree["meta"]))
  if split.num_classes != spec["num_classes"]:
    raise ConfigError(
        f"the checkpoint's model has {spec['num_classes']} classes but "
        f"dataset '{ds.name}' has {split.num_classes}; evaluate it on the "
        "dataset it was trained on")
  n = num_examples or len(split)
  if not 0 < n <= len(split):
    raise ConfigError(f"num_examples={n} but the {ds.name} "
                      f"{ds.get('split', 'test')} split holds {len(split)} "
                      "points; ask for at most that many (0 = all)")
  model = models.build_model(spec)
  variables = variables_of(tree)
  check_fit(model, variables, split.images.shape[1:])
  return Restored(variables, model, spec, tree["meta"], tree["step"], split,
                  n)


def check_fit(model, variables: Mapping[str, Any],
              image_shape: tuple[int, ...]) -> None:
  """ConfigError naming the first parameter whose path or shape differs
  from what ``model`` expects for inputs of ``image_shape``."""
  expected = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, *image_shape), np.float32),
      train=False))
  want = {jax.tree_util.keystr(p): v.shape for p, v in
          jax.tree_util.tree_leaves_with_path(dict(expected))}
  have = {jax.tree_util.keystr(p): np.shape(v) for p, v in
          jax.tree_util.tree_leaves_with_path(dict(variables))}
  for path in sorted(set(want) | set(have)):
    if want.get(path) != have.get(path):
      raise ConfigError(
          f"the checkpoint does not fit its model: {path} is "
          f"{have.get(path, 'missing')} in the checkpoint but the model "
          f"expects {want.get(path, 'nothing')}; was the checkpoint written "
          "by a different model?")


def layer_order(model, image_shape: tuple[int, ...]) -> list[str]:
  """``model``'s layer paths in the order its ``init`` creates them (the
  network's depth order)."""
  from robustjax.weightspace import trees  # local: only these tasks use it
  return trees.traced_creation_order(lambda: model.init(
      jax.random.key(0), np.zeros((1, *image_shape), np.float32),
      train=False))


def ood_config(config: Any) -> dict[str, Any] | None:
  """The checked ``config.ood`` block, or None when OOD evaluation is off."""
  from robustjax.data import corruptions  # local: keeps task imports light
  ood = config.get("ood")
  if ood is None or str(ood.get("corruptions", "none")) in ("", "none"):
    return None
  names = corruptions.resolve(str(ood.corruptions))
  severities = tuple(int(s) for s in ood.get("severities", (1, 2, 3, 4, 5)))
  for s in severities:
    corruptions.check_severity(s)
  source = ood.get("source", "generated")
  if source not in ("generated", "tfds"):
    raise ConfigError(f"ood.source={source!r}; use 'generated' (corrupt on "
                      "the fly) or 'tfds' (the official cifar10_corrupted "
                      "files)")
  if source == "tfds" and config.dataset.name != "cifar10":
    raise ConfigError("ood.source='tfds' reads cifar10_corrupted, which "
                      "fits cifar10 models only; use ood.source='generated'")
  label = str(ood.corruptions) if str(ood.corruptions) in \
      corruptions.NAMED_LISTS else "custom"
  return {"names": names, "severities": severities, "source": source,
          "label": label}


def evaluate_ood(model, variables: Variables, split: data.ArraySplit, mesh,
                 config: Any, ood_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """``evaluation.evaluate_corruptions`` as ``config.ood`` asks (points:
  ``ood.num_examples``, else ``eval.num_examples``; batch likewise)."""
  from robustjax.data import corrupted  # local: keeps task imports light
  ood = config.ood
  loader = None
  if ood_cfg["source"] == "tfds":
    data_dir = ood.get("data_dir") or None
    loader = lambda name, sev: corrupted.load_cifar10_corrupted(  # noqa: E731
        name, sev, data_dir)
  n = int(ood.get("num_examples", 0)) or int(config.eval.num_examples) or None
  batch_size = int(ood.get("batch_size", 0)) or int(config.eval.batch_size)
  return evaluation.evaluate_corruptions(
      model, variables, split, mesh, corruptions=ood_cfg["names"],
      severities=ood_cfg["severities"], batch_size=batch_size,
      num_examples=n, seed=int(config.get("seed", 0)),
      corrupted_splits=loader)


def bn_batches(dataset_cfg: Any, batch_size: int, count: int, seed: int,
               mesh) -> list[jax.Array]:
  """``count`` clean float batches of ``dataset_cfg``'s training split
  (its ``classes``, no augmentation), for re-estimating BatchNorm
  statistics."""
  train = data.subset(data.load_split(
      dataset_cfg.name, "train", source=dataset_cfg.source,
      data_dir=dataset_cfg.get("data_dir") or None),
      dataset_cfg.get("classes", ""))
  return data.clean_float_batches(train, batch_size, count, seed, mesh)


def save_variables(directory: str, variables: Mapping[str, Any], step: int,
                   meta: Mapping[str, Any]) -> None:
  """Writes ``variables`` as a checkpoint at ``step`` under ``directory``
  (readable by ``checkpoint.load`` and every checkpoint-reading task)."""
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=1, async_save=False)
  ckpt.save(step, {"params": variables["params"],
                   "batch_stats": variables["batch_stats"],
                   "step": np.int32(step)}, meta)
  ckpt.close()


def checkpoint_splits(meta: Mapping[str, Any], dataset_cfg: Any, *,
                      require_holdout: bool, val_size: int = 0,
                      path: str = "the checkpoint"
                      ) -> tuple[dict[str, Any], data.ArraySplit,
                                 data.ArraySplit | None]:
  """The rows a checkpoint trained on and the rows it held out.

  Read from the ``dataset`` block its training run saved in the
  checkpoint's meta (``name``, ``source``, ``classes``, ``val_size``,
  ``val_seed``; a RiFT output carries its input's) and rebuilt by the
  function the training loop holds out with (``data.train_val``), so a task
  can train on exactly the checkpoint's training rows and select on exactly
  the rows it never trained on.

  Args:
    meta: the checkpoint's meta (``checkpoint.load(...)["meta"]``).
    dataset_cfg: the task's ``dataset`` block: its ``name`` and ``source``
      must be the checkpoint's, its ``classes`` empty or the checkpoint's;
      its ``data_dir`` (if set) says where the data is now.
    require_holdout: refuse a checkpoint that held out nothing.
    val_size: 0, or the number of held-out points the caller expects.
    path: the checkpoint, for messages.

  Returns:
    ``(dataset, train, val)``: the dataset block used (to save with the
    task's outputs), the training remainder (uint8 ``[N_train, H, W, 3]``)
    and the held-out split (``[val_size, H, W, 3]``; None if nothing was
    held out).

  Raises:
    ConfigError: a checkpoint that held out nothing when one is required,
      a ``val_size`` that differs from the checkpoint's, or a dataset,
      source or class subset other than the checkpoint's.
  """
  trained = dict(meta.get("dataset") or {})
  name = trained.get("name", dataset_cfg.name)
  source = trained.get("source", dataset_cfg.source)
  if dataset_cfg.name != name:
    raise ConfigError(f"{path} was trained on {name} but dataset.name is "
                      f"'{dataset_cfg.name}'; set --config.dataset.name={name}")
  if dataset_cfg.source != source:
    # The held-out rows are a permutation of the split's order, and each
    # source keeps its own order.
    raise ConfigError(
        f"{path} was trained on {name} from source '{source}' but "
        f"dataset.source is '{dataset_cfg.source}'; set "
        f"--config.dataset.source={source} (its held-out rows depend on it)")
  classes = trained.get("classes", "") or ""
  total = data.DATASETS[name].num_classes
  asked = dataset_cfg.get("classes", "") or ""
  if asked and data.parse_classes(asked, total) != data.parse_classes(
      classes, total):
    raise ConfigError(
        f"dataset.classes='{asked}' but {path} was trained on classes "
        f"'{classes or 'all'}'; leave dataset.classes empty")
  held = int(trained.get("val_size", 0) or 0)
  if require_holdout and held == 0:
    raise ConfigError(
        f"{path} held out no training points (its dataset.val_size is 0), so "
        "selection='val' would select on points it trained on; train it with "
        "--config.dataset.val_size=N (N > 0), or use selection='paper' "
        "(test-set selection, as the reference)")
  if val_size and val_size != held:
    raise ConfigError(
        f"val_size={val_size} but {path} held out {held} training points "
        f"(its dataset.val_size); the selection split is the checkpoint's "
        f"own held-out split: set val_size=0 (or {held})")
  used = dict(trained, name=name, source=source, classes=classes,
              val_size=held, val_seed=int(trained.get("val_seed", 0) or 0))
  train, val = data.train_val(
      name, source=source,
      data_dir=dataset_cfg.get("data_dir") or trained.get("data_dir") or None,
      classes=classes, val_size=held, val_seed=used["val_seed"])
  return used, train, val


def restore_pair(config: Any, num_examples: int
                 ) -> tuple[Restored, Restored]:
  """The standard and the robust checkpoint of an output-space mixture
  (``config.checkpoint_std``, ``config.checkpoint_rob``), each with its
  model and evaluation split.

  Raises ConfigError (before any work) when a path is unset or holds no
  checkpoint, when the two models differ in class count, in the class
  subset or in the input shape they were trained on, or when either does
  not fit its model at the evaluation split's image shape.
  """
  metas = {}
  for side in ("std", "rob"):
    path = config.get(f"checkpoint_{side}")
    if not path:
      raise ConfigError(f"set --config.checkpoint_{side} to a training "
                        "workdir or a checkpoint step folder")
    metas[side] = checkpoint.read_meta(path, int(config.get("step", 0))
                                       or None,
                                       best=bool(config.get("best", False)))
  classes = {s: m["model"]["num_classes"] for s, m in metas.items()}
  if classes["std"] != classes["rob"]:
    raise ConfigError(f"checkpoint_std has {classes['std']} classes but "
                      f"checkpoint_rob has {classes['rob']}; mix two models "
                      "of the same classes")
  shapes = {s: _trained_image_shape(m) for s, m in metas.items()}
  if None not in shapes.values() and shapes["std"] != shapes["rob"]:
    raise ConfigError(f"checkpoint_std was trained on {shapes['std']} images "
                      f"but checkpoint_rob on {shapes['rob']}; mix two models "
                      "of the same input shape")
  info = data.DATASETS.get(config.dataset.name)
  for side, shape in shapes.items():
    if info is not None and shape is not None and shape != info.image_shape:
      raise ConfigError(f"checkpoint_{side} was trained on {shape} images but "
                        f"dataset '{info.name}' has {info.image_shape}; mix "
                        "two models of the dataset's input shape")
  subsets = {s: trained_classes(config.dataset, m) for s, m in metas.items()}
  if subsets["std"] != subsets["rob"]:
    raise ConfigError(f"checkpoint_std was trained on classes "
                      f"'{subsets['std'] or 'all'}' but checkpoint_rob on "
                      f"'{subsets['rob'] or 'all'}'; mix two models of the "
                      "same classes")
  out = []
  for side in ("std", "rob"):
    try:
      out.append(restore(config, num_examples,
                         path=config.get(f"checkpoint_{side}")))
    except ConfigError as err:
      raise ConfigError(f"checkpoint_{side}: {err}") from None
  return out[0], out[1]


def _trained_image_shape(meta: Mapping[str, Any]) -> tuple[int, ...] | None:
  """The image shape a checkpoint's dataset has (None if unrecorded)."""
  trained = meta.get("dataset") or {}
  if trained.get("image_shape"):
    return tuple(int(d) for d in trained["image_shape"])
  info = data.DATASETS.get(trained.get("name", ""))
  return tuple(info.image_shape) if info is not None else None
