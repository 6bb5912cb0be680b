"""Adaptive smoothing: the mixture weight ``a(x)`` from a mixing network.

``AdaptiveClassifier`` holds the two frozen base models, the layers whose
outputs feed the mixing network, the network's width, the temperatures and
the constants of the ``raw -> gamma -> a`` map. Its variables are
``{"std", "rob", "mixer"}``: each base model's ``{"params",
"batch_stats"}`` and the mixing head's. ``forward`` returns the
log-mixture, ``gamma`` and ``a`` for one of three phases, as the reference
runs them:

==========  ===================  ===============  ==========================
phase       mixer BatchNorm      constants        used for
==========  ===================  ===============  ==========================
``train``   batch statistics     training         the mixer's training step
``attack``  running statistics   training         crafting training attacks
``eval``    running statistics   evaluation       evaluation, attacks on it
==========  ===================  ===============  ==========================

The features are not detached: gradients with respect to the input flow
through ``a(x)``, the mixing network and both base models' features, so a
white-box attack on ``apply`` attacks the weight as well as the experts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from robustjax.errors import ConfigError
from robustjax.smoothing import mixing_net
from robustjax.smoothing.mixture import mix_log_probs
from robustjax.weightspace import trees

PHASES = ("train", "attack", "eval")


def features(model, variables: Mapping[str, Any], x: jax.Array,
             layers: Sequence[str]) -> tuple[jax.Array, jax.Array]:
  """``model``'s logits and the outputs of its top-level submodules
  ``layers`` on ``x`` (inference mode).

  Returns:
    ``(logits [B, K], [output of each layer, in the order of layers])``.
  """
  wanted = tuple(layers)

  def keep(module, method_name):
    return method_name == "__call__" and len(module.path) == 1 and \
        module.path[0] in wanted

  logits, state = model.apply(variables, x, train=False,
                              capture_intermediates=keep,
                              mutable=["intermediates"])
  found = state["intermediates"]
  missing = [name for name in wanted if name not in found]
  if missing:
    raise ConfigError(f"the model has no top-level layer "
                      f"{', '.join(missing)}; name layers it has "
                      f"(e.g. stage1, stage2)")
  return logits, [found[name]["__call__"][0] for name in wanted]


@dataclasses.dataclass(frozen=True)
class Output:
  """What the adaptive mixture computes on a batch ``[B, ...]``.

  log_probs: ``[B, C]`` log-mixture; gamma: ``[B]`` pre-sigmoid score;
  alpha: ``[B]`` weight of the robust model; std_logits, rob_logits:
  ``[B, C]`` base models' logits; batch_stats: the mixer's updated
  statistics (phase ``train``; else the ones it was given).
  """
  log_probs: jax.Array
  gamma: jax.Array
  alpha: jax.Array
  std_logits: jax.Array
  rob_logits: jax.Array
  batch_stats: Any


@dataclasses.dataclass(frozen=True)
class AdaptiveClassifier:
  """Two frozen base models mixed with a per-input weight ``a(x)``.

  std_model, rob_model: Flax modules ``apply(v, x, train) -> [B, C]``.
  std_layers, rob_layers: the two top-level layers of each model whose
    outputs feed the mixing network (the second at half the first's
    resolution), e.g. ``("stage1", "stage2")`` for the ResNets.
  width: the mixing network's channel multiplier (1.0: the reference's).
  std_scale, rob_scale: the experts' temperatures.
  train_constants, eval_constants: the ``raw -> gamma -> a`` constants of
    the training/attack phases and of evaluation.
  """
  std_model: Any
  rob_model: Any
  std_layers: tuple[str, str] = ("stage1", "stage2")
  rob_layers: tuple[str, str] = ("stage1", "stage2")
  width: float = 1.0
  std_scale: float = 1.0
  rob_scale: float = 1.0
  train_constants: mixing_net.GammaConstants = mixing_net.TRAIN_CONSTANTS
  eval_constants: mixing_net.GammaConstants = mixing_net.EVAL_CONSTANTS

  @property
  def head(self) -> mixing_net.MixingHead:
    return mixing_net.MixingHead(self.width)

  def _mixer_inputs(self, variables, x):
    std_logits, std_f = features(self.std_model, variables["std"], x,
                                 self.std_layers)
    rob_logits, rob_f = features(self.rob_model, variables["rob"], x,
                                 self.rob_layers)
    for a, b in zip(std_f, rob_f):
      if a.shape[:-1] != b.shape[:-1]:
        raise ConfigError(
            f"the two models' mixer features differ in resolution: "
            f"{tuple(a.shape)} and {tuple(b.shape)}; pick layers of equal "
            "spatial size")
    feats = [jnp.concatenate([a, b], -1) for a, b in zip(std_f, rob_f)]
    return std_logits, rob_logits, feats

  def init_mixer(self, key: jax.Array, std_variables, rob_variables,
                 image_shape: tuple[int, ...]) -> dict[str, Any]:
    """Fresh mixer variables ``{"params", "batch_stats"}`` for inputs of
    ``image_shape`` (H, W, C)."""
    x = jnp.zeros((2, *image_shape), jnp.float32)
    _, _, (f1, f2) = self._mixer_inputs(
        {"std": std_variables, "rob": rob_variables}, x)
    return dict(self.head.init(key, f1, f2, False, self.train_constants))

  def forward(self, variables: Mapping[str, Any], x: jax.Array,
              phase: str = "eval") -> Output:
    """The mixture on ``x [B, H, W, C]`` in ``phase`` (see the module)."""
    if phase not in PHASES:
      raise ConfigError(f"phase={phase!r}; use one of {', '.join(PHASES)}")
    std_logits, rob_logits, (f1, f2) = self._mixer_inputs(variables, x)
    constants = self.eval_constants if phase == "eval" else \
        self.train_constants
    mixer = variables["mixer"]
    if phase == "train":
      (gamma, alpha), state = self.head.apply(
          mixer, f1, f2, True, constants, mutable=["batch_stats"])
      stats = state["batch_stats"]
    else:
      gamma, alpha = self.head.apply(mixer, f1, f2, False, constants)
      stats = mixer["batch_stats"]
    out = mix_log_probs(std_logits, rob_logits, alpha,
                        std_scale=self.std_scale, rob_scale=self.rob_scale)
    return Output(out, gamma, alpha, std_logits, rob_logits, stats)

  def apply(self, variables: Mapping[str, Any], x: jax.Array,
            train: bool = False) -> jax.Array:
    """The evaluation-phase log-mixture ``[B, C]`` (a model's ``apply``:
    evaluation, AutoAttack and the curves take it as they take a model)."""
    del train  # every part is frozen in evaluation
    return self.forward(variables, x, "eval").log_probs


def check_mixer_fit(classifier: AdaptiveClassifier,
                    mixer_variables: Mapping[str, Any],
                    std_variables, rob_variables,
                    image_shape: tuple[int, ...], what: str = "the mixing "
                    "network checkpoint") -> None:
  """ConfigError naming the first mixer variable whose path, shape or dtype
  differs from what ``classifier`` expects for these base models."""
  expected = jax.eval_shape(lambda: classifier.init_mixer(
      jax.random.key(0), std_variables, rob_variables, image_shape))
  problems = trees.mismatches(dict(mixer_variables), expected)
  if problems:
    raise ConfigError(
        f"{what} does not fit these base models: {problems[0]} (the "
        "checkpoint first, the expected second); train a mixing network for "
        "this pair (same feature layers and width)")
