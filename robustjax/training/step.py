"""The training state and the one compiled training step.

The step is a pure function ``(state, batch, root_key) -> (state, metrics)``,
jitted over the mesh with explicit shardings: the state has the shardings of
the strategy (``sharding.state_shardings``: replicated for ``dp``, split over
``data`` for ``fsdp``) on the way in and out, the batch is split over the
``data`` axis, and the state buffers are donated.
Its randomness is ``fold_in(root_key, state.step)``, so step ``s`` draws the
same augmentation and attack noise whether or not the run was resumed.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from robustjax import data, sharding
from robustjax.training.objectives import Objective


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs (the data order derives from ``step``).

  params / batch_stats: the model's variable collections (batch_stats is
  ``{}`` for BatchNorm-free models). opt_state: the optax state.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}

  def to_dict(self) -> dict[str, Any]:
    """The checkpointed form: a plain dict, readable without this class."""
    return {"step": self.step, "params": self.params,
            "batch_stats": self.batch_stats, "opt_state": self.opt_state}

  @classmethod
  def from_dict(cls, tree: dict[str, Any]) -> "TrainState":
    return cls(**tree)


def init_state(model, tx: optax.GradientTransformation, key: jax.Array,
               image_shape: tuple[int, int, int]) -> TrainState:
  """Fresh parameters, BatchNorm statistics and optimizer state."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))


def make_train_step(objective: Objective, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh, *, augment: bool,
                    state_sharding: Any = None):
  """The jitted training step for ``objective`` (see the module docstring).

  batch: ``{"image": uint8 [B, H, W, 3], "label": int32 [B]}`` sharded over
  the mesh. ``state_sharding``: a ``TrainState`` of ``NamedSharding``s (from
  ``sharding.state_shardings``); None = replicated (``dp``). When any leaf is
  sharded (``fsdp``), the step gathers the parameters for the forward and
  backward passes and reduce-scatters the gradients, so the update and the
  optimizer state stay sharded. Metrics are batch means (fractions for
  accuracies) plus ``lr`` and ``grad_norm``.

  BatchNorm statistics go through, in order: the objective's
  ``attack_with_stats`` (train-mode attacks only), its ``loss`` and its
  ``after_update`` (a forward pass with the new parameters), each where set.
  """
  replicated = sharding.replicated(mesh)
  if state_sharding is None:
    state_sharding = replicated
  fsdp = any(not s.is_fully_replicated
             for s in jax.tree.leaves(state_sharding))

  def step(state: TrainState, batch: dict[str, jax.Array],
           root_key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    key = jax.random.fold_in(root_key, state.step)
    aug_key, attack_key = jax.random.split(key)
    images, labels = batch["image"], batch["label"]
    x = (data.random_crop_flip(aug_key, images) if augment
         else data.to_float(images))
    # FSDP: compute with the full parameters (one all-gather per sharded
    # leaf), then bring the gradients back to the parameters' sharding
    # (a reduce-scatter instead of dp's all-reduce).
    params = (sharding.fsdp_gather(state.params, mesh) if fsdp
              else state.params)
    variables = {"params": params, "batch_stats": state.batch_stats}
    x_adv = None
    batch_stats = state.batch_stats
    if objective.attack_with_stats is not None:
      # A train-mode attack (objective.attack_bn='train'): its forward passes
      # update the running statistics before the loss's do.
      x_adv, batch_stats = objective.attack_with_stats(
          params, batch_stats, x, labels, attack_key)
      x_adv = jax.lax.stop_gradient(x_adv)
    elif objective.attack is not None:
      x_adv = jax.lax.stop_gradient(
          objective.attack(variables, x, labels, attack_key))
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
    (_, (batch_stats, metrics)), grads = grad_fn(
        params, batch_stats, x, x_adv, labels)
    if fsdp:
      grads = sharding.fsdp_scatter(grads, state_sharding.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if objective.after_update is not None:
      # A forward pass with the updated weights, for its statistics only
      # (robust_overfitting's clean train-mode pass after the step).
      batch_stats = objective.after_update(
          sharding.fsdp_gather(params, mesh) if fsdp else params,
          batch_stats, x)
    metrics = dict(metrics, lr=schedule(state.step),
                   grad_norm=optax.global_norm(grads))
    new_state = TrainState(step=state.step + 1, params=params,
                           batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return jax.jit(step,
                 in_shardings=(state_sharding, sharding.batch_sharded(mesh),
                               replicated),
                 out_shardings=(state_sharding, replicated),
                 donate_argnums=(0,))
