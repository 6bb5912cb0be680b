"""One vocabulary for attacks: a registered name and its parameters.

An attack is written the same way wherever robustjax takes one (training
objectives, evaluation, RiFT's adversarial set and alpha selection, the
interpolation curves, AutoAttack's cascade): a mapping such as
``{"name": "pgd", "eps": 8/255, "step_size": 2/255, "steps": 20}``.
``build`` checks it against the registered attack's parameters and returns
an ``Attack``::

  attack = build({"name": "apgd-ce", "eps": 8 / 255, "steps": 100})
  x_adv = attack(logits_fn, x, y, keys)     # inside a jit
  attack.label                              # "apgd-ce100", for reports

Adding an attack is one ``register`` call, in any module imported before
the attack is named (the built-in ones register themselves in ``pgd.py``,
``apgd.py``, ``fab.py`` and ``square.py``)::

  @register("my-attack", defaults=dict(eps=8 / 255, steps=10))
  def my_attack(logits_fn, x, y, key, *, eps, steps):
    ...
    return x_adv

An attack function takes ``logits_fn`` (``x [B, H, W, C] -> logits [B, K]``
in inference mode), float images ``x`` in [0, 1], int labels ``y [B]`` and
``key``, one PRNG key or a typed key array ``[B]`` (one per example, which
makes each example's result independent of its batch), plus its parameters
as keywords; it returns ``x_adv`` of ``x``'s shape and dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from robustjax.errors import ConfigError

AttackFn = Callable[..., jax.Array]
# (params) -> label for reports, e.g. "pgd20"
LabelFn = Callable[[Mapping[str, Any]], str]


@dataclasses.dataclass(frozen=True)
class Stepwise:
  """An attack as ``init`` / ``step`` / ``finish``, for a driver that runs
  its iterations in compiled chunks (AutoAttack's cascade).

  All functions take a keyed model ``model(x [B, ...], keys [B]) -> [B, K]``
  (deterministic models ignore the keys):

  init: ``(model, x, y, target, keys) -> state`` (a dict of ``[B, ...]``).
  make_step: ``(model, x, y, target, keys) -> step(state, i) -> state``.
  finish: ``(state, x) -> (x_adv [B, ...], robust [B] bool)``.
  steps: iterations to run.
  targeted: whether the driver loops over target classes (``target [B]``;
    untargeted attacks ignore it).
  restarts: independent runs of an untargeted attack (each from its own
    keys, on the points the earlier runs left robust).
  still_robust: ``state -> [B] bool`` where the attack has not yet
    succeeded, if the driver may stop early once none is left; else None.
  """
  init: Callable[..., dict[str, Any]]
  make_step: Callable[..., Callable[[dict[str, Any], jax.Array],
                                    dict[str, Any]]]
  finish: Callable[..., tuple[jax.Array, jax.Array]]
  steps: int
  targeted: bool = False
  restarts: int = 1
  still_robust: Callable[[dict[str, Any]], jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class Chunked:
  """An attack as ``init`` / ``step`` / ``output``, for evaluation, which
  runs its iterations in compiled chunks of a few unrolled steps (one
  program per chunk size, reused for every chunk) instead of one program
  holding every step.

  The functions reproduce the attack function exactly: the same start from
  the same per-example keys, the same steps in the same order.

  init: ``(logits_fn, x, y, keys) -> state``, ``logits_fn(x [B, ...]) ->
    [B, K]`` in inference mode, ``keys [B]`` one PRNG key per example;
    ``state`` is a dict of ``[B, ...]`` arrays.
  make_step: ``(logits_fn, x, y, keys) -> step(state, i) -> state``.
  output: ``(state, x) -> x_adv [B, ...]``.
  steps: iterations to run.
  """
  init: Callable[..., dict[str, Any]]
  make_step: Callable[..., Callable[[dict[str, Any], jax.Array],
                                    dict[str, Any]]]
  output: Callable[[dict[str, Any], jax.Array], jax.Array]
  steps: int


@dataclasses.dataclass(frozen=True)
class AttackDef:
  """A registered attack: its function, parameters and defaults."""
  name: str
  fn: AttackFn
  defaults: Mapping[str, Any]
  label: LabelFn
  check: Callable[[Mapping[str, Any]], None] | None = None
  # (params) -> Stepwise, for attacks AutoAttack's cascade can run.
  stepwise: Callable[..., Stepwise] | None = None
  # (params) -> Chunked or None, for attacks evaluation can run in chunks.
  chunked: Callable[..., Chunked | None] | None = None


@dataclasses.dataclass(frozen=True)
class Attack:
  """A configured attack: ``attack(logits_fn, x, y, key) -> x_adv``.

  ``params`` holds every parameter (defaults filled in) as a sorted tuple
  of pairs, so an ``Attack`` is hashable and equal attacks share compiled
  steps.
  """
  name: str
  params: tuple[tuple[str, Any], ...]

  @property
  def definition(self) -> AttackDef:
    return _REGISTRY[self.name]

  def __call__(self, logits_fn: Callable[[jax.Array], jax.Array],
               x: jax.Array, y: jax.Array, key: jax.Array | None
               ) -> jax.Array:
    return self.definition.fn(logits_fn, x, y, key, **dict(self.params))

  def get(self, param: str, default: Any = None) -> Any:
    return dict(self.params).get(param, default)

  @property
  def eps(self) -> float:
    return float(self.get("eps", 0.0))

  @property
  def label(self) -> str:
    """A short name for reports and the console, e.g. ``pgd20``."""
    return self.definition.label(dict(self.params))

  @property
  def is_identity(self) -> bool:
    """True for the clean pass (``none``): no adversarial input."""
    return self.name == NONE

  def stepwise(self) -> Stepwise:
    """The stepwise form AutoAttack's driver runs, for attacks that have
    one (ConfigError if not)."""
    if self.definition.stepwise is None:
      raise ConfigError(f"attack '{self.name}' has no chunked form; "
                        f"AutoAttack can run {', '.join(stepwise_attacks())}")
    return self.definition.stepwise(**dict(self.params))

  def chunked(self) -> Chunked | None:
    """The form evaluation runs in compiled chunks, or None where this
    attack (with these parameters) has none: it then runs as one
    program."""
    if self.definition.chunked is None:
      return None
    return self.definition.chunked(**dict(self.params))

  def to_dict(self) -> dict[str, Any]:
    """The mapping ``build`` takes back: ``{"name": ..., **params}``."""
    return {"name": self.name, **dict(self.params)}


NONE = "none"
_REGISTRY: dict[str, AttackDef] = {}


def register(name: str, *, defaults: Mapping[str, Any],
             label: LabelFn | None = None,
             check: Callable[[Mapping[str, Any]], None] | None = None,
             stepwise: Callable[..., Stepwise] | None = None,
             chunked: Callable[..., Chunked | None] | None = None
             ) -> Callable[[AttackFn], AttackFn]:
  """Decorator adding an attack function to the registry under ``name``.

  Args:
    name: the name configs use (``attack.name``).
    defaults: every parameter the function takes, with its default; a
      config may set only these.
    label: ``params -> str`` for reports (default: the name).
    check: ``params -> None``, raising ``ConfigError`` for bad values
      before anything is traced.
    stepwise: ``(**params) -> Stepwise``, if a chunked driver can run it.
    chunked: ``(**params) -> Chunked | None``, if evaluation can run it in
      compiled chunks (None for parameters it cannot).
  """
  def decorator(fn: AttackFn) -> AttackFn:
    # Two modules claiming one name is a programming error, not bad input.
    if name in _REGISTRY:
      raise ValueError(f"attack {name!r} is registered twice")
    _REGISTRY[name] = AttackDef(name, fn, dict(defaults),
                                label or (lambda params: name), check,
                                stepwise, chunked)
    return fn
  return decorator


def available_attacks() -> list[str]:
  """The registered attack names, sorted."""
  return sorted(_REGISTRY)


def defaults(name: str) -> dict[str, Any]:
  """Every parameter of attack ``name`` with its default (what a config
  block must spell out for each to be settable from the command line)."""
  if name not in _REGISTRY:
    raise ConfigError(f"unknown attack '{name}'; choose one of: "
                      f"{', '.join(available_attacks())}")
  return dict(_REGISTRY[name].defaults)


def stepwise_attacks() -> list[str]:
  """The attacks with a stepwise form (AutoAttack's building blocks)."""
  return sorted(n for n, d in _REGISTRY.items() if d.stepwise is not None)


def build(spec: Mapping[str, Any] | Attack | None = None, /,
          **overrides: Any) -> Attack:
  """The ``Attack`` that ``spec`` (plus ``overrides``) describes.

  ``spec`` is a mapping with ``name`` and any of that attack's parameters
  (an ``ml_collections.ConfigDict`` works, as does an ``Attack``); missing
  parameters take the registered defaults. ``steps=0`` on an iterative
  attack means no attack: the result is ``none`` (the clean pass).

  Raises:
    ConfigError: an unknown name or parameter, or a bad value.
  """
  if isinstance(spec, Attack):
    spec = spec.to_dict()
  params = dict(spec.items()) if spec is not None else {}
  params.update(overrides)
  name = str(params.pop("name", "pgd"))
  if name not in _REGISTRY:
    raise ConfigError(f"unknown attack '{name}'; choose one of: "
                      f"{', '.join(available_attacks())}")
  definition = _REGISTRY[name]
  unknown = sorted(set(params) - set(definition.defaults))
  if unknown:
    raise ConfigError(
        f"attack '{name}' has no parameter {', '.join(unknown)}; its "
        f"parameters are {', '.join(sorted(definition.defaults)) or 'none'}")
  full = {**definition.defaults, **params}
  if name != NONE and "steps" in full and _is_zero(full["steps"]):
    return Attack(NONE, (("eps", _as_float(full.get("eps", 0.0))),))
  if definition.check is not None:
    definition.check(full)
  return Attack(name, tuple(sorted(full.items())))


def _is_zero(value: Any) -> bool:
  try:
    return int(value) == 0
  except (TypeError, ValueError):
    return False


def _as_float(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"attack eps={value!r} is not a number") from None


@register(NONE, defaults=dict(eps=0.0))
def no_attack(logits_fn, x, y, key, *, eps):
  """The clean pass: returns ``x`` unchanged."""
  del logits_fn, y, key, eps
  return x
