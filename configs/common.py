"""Shared pieces of the config files (configs import this; robustjax never does).

``parse_arg("trades,smoke,model=resnet18")`` -> a dict of the ``k=v`` pairs
with bare words set to True, so ``--config=configs/at.py:trades,smoke`` works.
"""

from __future__ import annotations

import ml_collections

EPS = 8 / 255


def parse_arg(arg: str | None, **defaults) -> dict:
  """Parses ``a=1,b,c=x`` into ``{"a": 1, "b": True, "c": "x"}`` over
  ``defaults`` (values cast to the default's type); a bare word that is not a
  key of ``defaults`` becomes ``{word: True}``."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      out[key] = True
    elif key in defaults and defaults[key] is not None:
      kind = type(defaults[key])
      out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool \
          else kind(value)
    else:
      out[key] = value
  return out


def pgd_attack(steps: int, eps: float = EPS, step_size: float = 2 / 255,
               restarts: int = 1) -> ml_collections.ConfigDict:
  """An L-inf PGD attack with a uniform random start (CE loss), in the
  attack registry's vocabulary (robustjax/attacks/registry.py); any other
  registered attack is written the same way, e.g. ``{"name": "apgd-ce",
  "eps": EPS, "steps": 100}``."""
  return ml_collections.ConfigDict(dict(
      name="pgd", eps=eps, step_size=step_size, steps=steps,
      restarts=restarts, norm="linf", loss="ce", start="uniform"))


def attack_config(name: str = "pgd", **params) -> ml_collections.ConfigDict:
  """Registered attack ``name`` with every parameter spelled out (its
  defaults, then ``params``), so each one can be set from the command line
  (``--config.eval.attack.steps=50``)."""
  from robustjax import attacks  # local: configs load light
  block = attacks.defaults(name)
  unknown = sorted(set(params) - set(block))
  if unknown:
    raise ValueError(f"attack {name} has no parameter {', '.join(unknown)}")
  block.update(params)
  return ml_collections.ConfigDict(dict(name=name, **block))


def training_attack(objective: str, *, eps: float = EPS,
                    step_size: float = 2 / 255, steps: int = 10
                    ) -> ml_collections.ConfigDict:
  """The attack of training ``objective``'s reference (TRADES: KL-PGD from
  x + 0.001 N(0, I); MART: CE-PGD from there; FGSM-RS: FGSM from a uniform
  start; PGD-AT: PGD), with these budgets, every parameter spelled out."""
  from robustjax import attacks  # local: configs load light
  from robustjax.training import objectives
  attack = objectives.reference_params(
      objective, eps=eps, step_size=step_size, steps=steps)["attack"]
  return ml_collections.ConfigDict(
      attacks.build(attack or {"name": "pgd"}).to_dict())


def checkpoint_task(task: str, best: bool = False
                    ) -> ml_collections.ConfigDict:
  """The keys every task that reads a saved checkpoint shares.

  ``checkpoint_path`` (a workdir or step folder, set on the command line),
  ``step`` (0 = newest), ``best``, the test split of the embedded CIFAR-10,
  ``seed`` and ``num_devices`` (0 = all). ``dataset.classes`` "" means the
  classes the checkpoint was trained on (all, or its ``dataset.classes``).
  """
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.num_devices = 0
  c.checkpoint_path = ""
  c.step = 0
  c.best = best
  c.dataset = dict(name="cifar10", source="embedded", data_dir="",
                   split="test", classes="")
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every training key with its default; experiment files override it."""
  c = ml_collections.ConfigDict()
  c.task = "train"
  c.seed = 0
  c.num_devices = 0          # 0 = all devices
  c.batch_size = 128
  c.num_epochs = 1.0
  c.num_steps = 0            # > 0 overrides num_epochs
  c.log_every = 50
  c.progress_bar = True
  # dtype: compute dtype of the training step. "bfloat16" = mixed precision
  # (bf16 convs and matmuls; float32 parameters, optimizer state, logits,
  # softmax and loss). eval.dtype is separate and stays float32 by default.
  c.model = dict(name="resnet18", width=1.0, dtype="float32")
  c.dataset = dict(name="cifar10", source="embedded", data_dir="",
                   val_size=0, val_seed=0, augment=True,
                   # A class subset ("0-4", "5-9", "0,2,4"), relabelled
                   # 0..K-1; "" = all classes.
                   classes="",
                   # CIFAR-10-C style copies of the splits (RWS-style
                   # training): names = a corruption, a list (rift18 ...)
                   # or none; mode single (one type) or random (per image).
                   corruption=dict(names="none", severities=(5,),
                                   mode="single", seed=0, splits="train,test"))
  # attack: the objective's inner maximisation, in the attack registry's
  # vocabulary (set_objective writes each objective's reference attack).
  # attack_bn: BatchNorm mode of the training attack: 'eval' (running
  # statistics, never updated) or 'train' as the pgd_at / fgsm_rs reference
  # scripts (robustjax/training/objectives.py); refused for trades and mart.
  c.objective = dict(name="pgd_at", beta=6.0, attack_bn="eval",
                     attack=training_attack("pgd_at"))
  c.optimizer = dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                     weight_decay_on="all", schedule="piecewise",
                     boundaries=(0.5, 0.75), decay=0.1, warmup_steps=0,
                     peak_fraction=0.4)
  c.eval = dict(every_steps=1000, num_examples=1000, batch_size=512,
                attack=pgd_attack(10), dtype="float32")
  c.final_eval = dict(num_examples=0, batch_size=512, attack=pgd_attack(20))
  c.checkpoint = dict(every_steps=500, max_to_keep=2, best_metric="adv_acc",
                      async_save=True)
  # How the training state is laid out over the devices (robustjax/sharding.py):
  # dp = replicated parameters; fsdp = parameters and optimizer state split
  # over the data axis (ZeRO-3), for models too large to replicate; fsdp
  # leaves under min_size elements stay replicated. fsdp_size=k (a divisor of
  # the device count) splits the state within groups of k devices and
  # replicates it across groups (hybrid, HSDP); 0 = one group of all devices.
  c.sharding = dict(strategy="dp", min_size=2 ** 14, fsdp_size=0)
  return c


def set_objective(c: ml_collections.ConfigDict, name: str, *,
                  eps: float = EPS, step_size: float = 2 / 255,
                  steps: int = 10, beta: float | None = None) -> None:
  """Makes ``c`` train with objective ``name`` and its reference attack."""
  c.objective.name = name
  c.objective.attack = training_attack(name, eps=eps, step_size=step_size,
                                       steps=steps)
  if beta is not None:
    c.objective.beta = beta


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``smoke`` variant: same code paths, done in well under a minute on
  one CPU core (tiny model, a few steps, few evaluation points)."""
  c.model.name, c.model.width = "small_cnn", 0.25
  c.batch_size = 32
  c.num_steps = 6
  c.log_every = 2
  if "steps" in c.objective.attack:
    c.objective.attack.steps = min(int(c.objective.attack.steps), 2)
  c.eval.update(every_steps=3, num_examples=64, batch_size=32)
  c.eval.attack.steps = 2
  c.final_eval.update(num_examples=64, batch_size=32)
  c.final_eval.attack.steps = 3
  c.checkpoint.every_steps = 3
  return c
