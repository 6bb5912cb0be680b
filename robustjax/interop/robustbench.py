"""RobustBench model names -> the architecture and options that load them.

``entry(name, dataset="cifar10", threat="Linf")`` gives the ``Entry`` of one
model of RobustBench 1.1.1's model zoo whose class robustjax computes
exactly: the ``archs.ARCHS`` name, its options for ``convert.from_torch``,
the input normalisation the class applies, and what export needs to match
the class's ``state_dict`` (``sub_block1``, ``mu``/``sigma`` buffers).
The weights themselves are the user's: download them with RobustBench (or
from the paper's release) and import the file.

``ENTRIES`` is the table; ``markdown_table()`` renders it for
docs/interop.md (tests/test_interop.py checks that the page holds it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from robustjax.errors import ConfigError
from robustjax.interop import archs

# Per-channel (mean, std) that RobustBench's classes apply to [0, 1] inputs.
C10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
C100DM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
C100W = ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
         (0.2673342858792401, 0.2564384629170883, 0.27615047132568404))
C100C = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
RONY = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))
AUG = ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
       (0.24703225141799082, 0.24348516474564, 0.26158783926049628))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # 2x - 1
DATASETS = ("cifar10", "cifar100")
THREATS = ("Linf", "L2", "corruptions")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One RobustBench model.

  dataset, threat, name: where it sits in the zoo (``threat``: ``Linf``,
  ``L2`` or ``corruptions``). arch: an ``archs.ARCHS`` name. options: its
  ``from_torch`` options (depth, widen, activation, num_classes). mean,
  std: the class's input normalisation (None: the architecture's own).
  sub_block1: the class declares the TRADES WideResNet's unused
  ``sub_block1`` copy. buffers: the class stores mean/std as ``mu`` /
  ``sigma`` buffers (False when it normalises in code, e.g. ``2x - 1``).
  """
  dataset: str
  threat: str
  name: str
  arch: str
  options: Mapping[str, Any]
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  sub_block1: bool
  buffers: bool

  def from_torch_options(self) -> dict[str, Any]:
    """Keyword arguments of ``convert.from_torch`` for this model."""
    out = dict(self.options)
    if self.mean is not None:
      out.update(mean=self.mean, std=self.std)
    return out


def _row(dataset: str, threat: str, name: str, arch: str, *,
         norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
         sub_block1: bool = False, buffers: bool = True,
         **options: Any) -> Entry:
  mean, std = norm if norm is not None else (None, None)
  # DeepMind's classes take mean/std as constructor arguments, never as
  # state_dict buffers.
  return Entry(dataset, threat, name, arch, options, mean, std, sub_block1,
               buffers and norm is not None and archs.ARCHS[arch].buffers)


ENTRIES: tuple[Entry, ...] = (
    _row("cifar10", "Linf", "Andriushchenko2020Understanding",
         "preact_resnet18"),
    _row("cifar10", "Linf", "Carmon2019Unlabeled",
         "wide_resnet", depth=28, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Sehwag2020Hydra",
         "wide_resnet", depth=28, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Wang2020Improving",
         "wide_resnet", depth=28, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Hendrycks2019Using",
         "wide_resnet", depth=28, widen=10, buffers=False, norm=HALF),
    _row("cifar10", "Linf", "Rice2020Overfitting",
         "wide_resnet", depth=34, widen=20, norm=C10),
    _row("cifar10", "Linf", "Zhang2019Theoretically",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Huang2020Self",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Wong2020Fast", "preact_resnet18", norm=C10),
    _row("cifar10", "Linf", "Zhang2019You",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Zhang2020Attacks",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Wu2020Adversarial_extra",
         "wide_resnet", depth=28, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Wu2020Adversarial",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Gowal2020Uncovering_70_16",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Gowal2020Uncovering_70_16_extra",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Gowal2020Uncovering_34_20",
         "dm_wide_resnet", depth=34, widen=20, activation="swish"),
    _row("cifar10", "Linf", "Gowal2020Uncovering_28_10_extra",
         "dm_wide_resnet", depth=28, widen=10, activation="swish"),
    _row("cifar10", "Linf", "Sehwag2021Proxy",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Sehwag2021Proxy_R18", "resnet18"),
    _row("cifar10", "Linf", "Sitawarin2020Improving",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Chen2020Efficient",
         "wide_resnet", depth=34, widen=10, sub_block1=True, norm=C10),
    _row("cifar10", "Linf", "Cui2020Learnable_34_20",
         "wide_resnet", depth=34, widen=20, sub_block1=True),
    _row("cifar10", "Linf", "Cui2020Learnable_34_10",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Zhang2020Geometry",
         "wide_resnet", depth=28, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Rebuffi2021Fixing_28_10_cutmix_ddpm",
         "dm_wide_resnet", depth=28, widen=10, activation="swish"),
    _row("cifar10", "Linf", "Rebuffi2021Fixing_106_16_cutmix_ddpm",
         "dm_wide_resnet", depth=106, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Rebuffi2021Fixing_70_16_cutmix_ddpm",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Rebuffi2021Fixing_70_16_cutmix_extra",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Sridhar2021Robust",
         "wide_resnet", depth=28, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Sridhar2021Robust_34_15",
         "wide_resnet", depth=34, widen=15, sub_block1=True),
    _row("cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm",
         "dm_preact_resnet18", activation="swish"),
    _row("cifar10", "Linf", "Rade2021Helper_R18_extra",
         "dm_preact_resnet18", activation="swish"),
    _row("cifar10", "Linf", "Rade2021Helper_R18_ddpm",
         "dm_preact_resnet18", activation="swish"),
    _row("cifar10", "Linf", "Rade2021Helper_extra",
         "dm_wide_resnet", depth=34, widen=10, activation="swish"),
    _row("cifar10", "Linf", "Rade2021Helper_ddpm",
         "dm_wide_resnet", depth=28, widen=10, activation="swish"),
    _row("cifar10", "Linf", "Addepalli2021Towards_RN18", "resnet18"),
    _row("cifar10", "Linf", "Addepalli2021Towards_WRN34",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "Linf", "Gowal2021Improving_70_16_ddpm_100m",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Gowal2021Improving_28_10_ddpm_100m",
         "dm_wide_resnet", depth=28, widen=10, activation="swish"),
    _row("cifar10", "Linf", "Gowal2021Improving_R18_ddpm_100m",
         "dm_preact_resnet18", activation="swish"),
    _row("cifar10", "Linf", "Chen2021LTD_WRN34_10",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Chen2021LTD_WRN34_20",
         "wide_resnet", depth=34, widen=20),
    _row("cifar10", "Linf", "Standard", "wide_resnet", depth=28, widen=10),
    _row("cifar10", "Linf", "Jia2022LAS-AT_34_10",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Jia2022LAS-AT_70_16",
         "wide_resnet", depth=70, widen=16),
    _row("cifar10", "Linf", "Pang2022Robustness_WRN28_10",
         "dm_wide_resnet", depth=28, widen=10, activation="swish"),
    _row("cifar10", "Linf", "Pang2022Robustness_WRN70_16",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "Linf", "Addepalli2022Efficient_RN18", "resnet18"),
    _row("cifar10", "Linf", "Addepalli2022Efficient_WRN_34_10",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Wang2023Better_WRN-28-10",
         "dm_wide_resnet", depth=28, widen=10, activation="silu"),
    _row("cifar10", "Linf", "Wang2023Better_WRN-70-16",
         "dm_wide_resnet", depth=70, widen=16, activation="silu"),
    _row("cifar10", "Linf", "Xu2023Exploring_WRN-28-10",
         "dm_wide_resnet", depth=28, widen=10, activation="silu"),
    _row("cifar10", "Linf", "Cui2023Decoupled_WRN-28-10",
         "dm_wide_resnet", depth=28, widen=10, activation="silu"),
    _row("cifar10", "Linf", "Cui2023Decoupled_WRN-34-10",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Chen2024Data_WRN_34_10",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "Linf", "Chen2024Data_WRN_34_20",
         "wide_resnet", depth=34, widen=20),
    _row("cifar10", "Linf", "Bartoldson2024Adversarial_WRN-94-16",
         "dm_wide_resnet", depth=94, widen=16, activation="silu"),
    _row("cifar10", "Linf", "Bartoldson2024Adversarial_WRN-82-8",
         "dm_wide_resnet", depth=82, widen=8, activation="silu"),
    _row("cifar10", "L2", "Rice2020Overfitting",
         "preact_resnet18_v2", norm=C10),
    _row("cifar10", "L2", "Rony2019Decoupling",
         "wide_resnet", depth=28, widen=10, norm=RONY),
    _row("cifar10", "L2", "Standard", "wide_resnet", depth=28, widen=10),
    _row("cifar10", "L2", "Wu2020Adversarial",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "L2", "Gowal2020Uncovering",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "L2", "Gowal2020Uncovering_extra",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "L2", "Sehwag2021Proxy",
         "wide_resnet", depth=34, widen=10),
    _row("cifar10", "L2", "Sehwag2021Proxy_R18", "resnet18"),
    _row("cifar10", "L2", "Rebuffi2021Fixing_70_16_cutmix_ddpm",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "L2", "Rebuffi2021Fixing_28_10_cutmix_ddpm",
         "dm_wide_resnet", depth=28, widen=10, activation="swish"),
    _row("cifar10", "L2", "Rebuffi2021Fixing_70_16_cutmix_extra",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "L2", "Augustin2020Adversarial_34_10",
         "wide_resnet", depth=34, widen=10, norm=AUG),
    _row("cifar10", "L2", "Augustin2020Adversarial_34_10_extra",
         "wide_resnet", depth=34, widen=10, norm=AUG),
    _row("cifar10", "L2", "Rebuffi2021Fixing_R18_cutmix_ddpm",
         "dm_preact_resnet18", activation="swish"),
    _row("cifar10", "L2", "Rade2021Helper_R18_ddpm",
         "dm_preact_resnet18", activation="swish"),
    _row("cifar10", "L2", "Wang2023Better_WRN-28-10",
         "dm_wide_resnet", depth=28, widen=10, activation="silu"),
    _row("cifar10", "L2", "Wang2023Better_WRN-70-16",
         "dm_wide_resnet", depth=70, widen=16, activation="silu"),
    _row("cifar10", "corruptions", "Rebuffi2021Fixing_70_16_cutmix_extra_Linf",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "corruptions", "Rebuffi2021Fixing_70_16_cutmix_extra_L2",
         "dm_wide_resnet", depth=70, widen=16, activation="swish"),
    _row("cifar10", "corruptions", "Hendrycks2020AugMix_WRN",
         "wide_resnet", depth=40, widen=2, norm=HALF),
    _row("cifar10", "corruptions", "Kireev2021Effectiveness_Gauss50percent",
         "preact_resnet18_v2", norm=C10),
    _row("cifar10", "corruptions", "Kireev2021Effectiveness_AugMixNoJSD",
         "preact_resnet18_v2", norm=C10),
    _row("cifar10", "corruptions", "Kireev2021Effectiveness_RLAT",
         "preact_resnet18_v2", norm=C10),
    _row("cifar10", "corruptions", "Kireev2021Effectiveness_RLATAugMixNoJSD",
         "preact_resnet18_v2", norm=C10),
    _row("cifar10", "corruptions", "Kireev2021Effectiveness_RLATAugMix",
         "preact_resnet18_v2", norm=C10),
    _row("cifar10", "corruptions", "Standard",
         "wide_resnet", depth=28, widen=10),
    _row("cifar10", "corruptions", "Addepalli2021Towards_WRN34",
         "wide_resnet", depth=34, widen=10, sub_block1=True),
    _row("cifar10", "corruptions", "Modas2021PRIMEResNet18",
         "resnet18", norm=HALF),
    _row("cifar10", "corruptions", "Addepalli2022Efficient_WRN_34_10",
         "wide_resnet", depth=34, widen=10),
    _row("cifar100", "Linf",
         "Gowal2020Uncovering", "dm_wide_resnet",
         depth=70, widen=16, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Gowal2020Uncovering_extra", "dm_wide_resnet",
         depth=70, widen=16, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf", "Cui2020Learnable_34_20_LBGAT6",
         "wide_resnet", depth=34, widen=20, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf", "Cui2020Learnable_34_10_LBGAT0",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf", "Cui2020Learnable_34_10_LBGAT6",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf",
         "Chen2020Efficient", "wide_resnet",
         depth=34, widen=10, num_classes=100, sub_block1=True, norm=C100C),
    _row("cifar100", "Linf", "Wu2020Adversarial",
         "wide_resnet", depth=34, widen=10, num_classes=100, norm=C100W),
    _row("cifar100", "Linf", "Sehwag2021Proxy",
         "wide_resnet", depth=34, widen=10, num_classes=100),
    _row("cifar100", "Linf", "Sitawarin2020Improving",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf",
         "Hendrycks2019Using", "wide_resnet",
         depth=28, widen=10, num_classes=100, buffers=False, norm=HALF),
    _row("cifar100", "Linf", "Rice2020Overfitting",
         "preact_resnet18_v2", num_classes=100, norm=C100W),
    _row("cifar100", "Linf",
         "Rebuffi2021Fixing_70_16_cutmix_ddpm", "dm_wide_resnet",
         depth=70, widen=16, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Rebuffi2021Fixing_28_10_cutmix_ddpm", "dm_wide_resnet",
         depth=28, widen=10, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Rebuffi2021Fixing_R18_ddpm", "dm_preact_resnet18",
         activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Rade2021Helper_R18_ddpm", "dm_preact_resnet18",
         activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf", "Addepalli2021Towards_PARN18",
         "preact_resnet18_v2", num_classes=100),
    _row("cifar100", "Linf", "Addepalli2021Towards_WRN34",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf", "Chen2021LTD_WRN34_10",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf",
         "Pang2022Robustness_WRN28_10", "dm_wide_resnet",
         depth=28, widen=10, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Pang2022Robustness_WRN70_16", "dm_wide_resnet",
         depth=70, widen=16, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf", "Jia2022LAS-AT_34_10",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "Linf", "Jia2022LAS-AT_34_20",
         "wide_resnet", depth=34, widen=20, num_classes=100),
    _row("cifar100", "Linf", "Addepalli2022Efficient_RN18",
         "resnet18", num_classes=100),
    _row("cifar100", "Linf", "Addepalli2022Efficient_WRN_34_10",
         "wide_resnet", depth=34, widen=10, num_classes=100),
    _row("cifar100", "Linf", "Cui2020Learnable_34_10_LBGAT9_eps_8_255",
         "wide_resnet", depth=34, widen=10, num_classes=100),
    _row("cifar100", "Linf",
         "Wang2023Better_WRN-28-10", "dm_wide_resnet",
         depth=28, widen=10, activation="silu", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Wang2023Better_WRN-70-16", "dm_wide_resnet",
         depth=70, widen=16, activation="silu", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf",
         "Cui2023Decoupled_WRN-28-10", "dm_wide_resnet",
         depth=28, widen=10, activation="silu", num_classes=100, norm=C100DM),
    _row("cifar100", "Linf", "Cui2023Decoupled_WRN-34-10",
         "wide_resnet", depth=34, widen=10, num_classes=100),
    _row("cifar100", "Linf", "Cui2023Decoupled_WRN-34-10_autoaug",
         "wide_resnet", depth=34, widen=10, num_classes=100),
    _row("cifar100", "Linf", "Chen2024Data_WRN_34_10",
         "wide_resnet", depth=34, widen=10, num_classes=100),
    _row("cifar100", "corruptions",
         "Gowal2020Uncovering_Linf", "dm_wide_resnet",
         depth=70, widen=16, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "corruptions",
         "Gowal2020Uncovering_extra_Linf", "dm_wide_resnet",
         depth=70, widen=16, activation="swish", num_classes=100, norm=C100DM),
    _row("cifar100", "corruptions", "Hendrycks2020AugMix_WRN",
         "wide_resnet", depth=40, widen=2, num_classes=100, norm=HALF),
    _row("cifar100", "corruptions", "Addepalli2021Towards_PARN18",
         "preact_resnet18_v2", num_classes=100),
    _row("cifar100", "corruptions", "Addepalli2021Towards_WRN34",
         "wide_resnet", depth=34, widen=10, num_classes=100, sub_block1=True),
    _row("cifar100", "corruptions", "Modas2021PRIMEResNet18",
         "resnet18", num_classes=100, norm=HALF),
    _row("cifar100", "corruptions", "Addepalli2022Efficient_WRN_34_10",
         "wide_resnet", depth=34, widen=10, num_classes=100),
)


def entry(name: str, dataset: str = "cifar10", threat: str = "Linf"
          ) -> Entry:
  """The table's entry for RobustBench model ``name`` of ``dataset`` and
  ``threat``.

  Raises:
    ConfigError: a name the table does not hold (with the closest names,
      and whether the name exists under another dataset/threat).
  """
  for e in ENTRIES:
    if (e.dataset, e.threat, e.name) == (dataset, threat, name):
      return e
  elsewhere = [f"{e.dataset}/{e.threat}" for e in ENTRIES if e.name == name]
  if elsewhere:
    raise ConfigError(
        f"RobustBench model {name} is not in {dataset}/{threat} but in "
        f"{', '.join(elsewhere)}; set the dataset and threat model")
  import difflib  # local: only for this message
  close = difflib.get_close_matches(
      name, [e.name for e in ENTRIES if e.dataset == dataset], n=3)
  hint = f" (closest: {', '.join(close)})" if close else ""
  raise ConfigError(
      f"unknown or unsupported RobustBench model {name!r} for "
      f"{dataset}/{threat}{hint}; the supported ones are listed in "
      "docs/interop.md, and any other model of a supported architecture "
      "imports with arch=NAME and its options")


def describe(e: Entry) -> str:
  """The architecture of ``e`` in a few words: ``dm_wide_resnet 70-16
  swish``, ``wide_resnet 34-10``, ``resnet18``."""
  o = e.options
  text = e.arch
  if "depth" in o:
    text += f" {o['depth']}-{o['widen']}"
  if "activation" in o:
    text += f" {o['activation']}"
  if o.get("num_classes", 10) != 10:
    text += f", {o['num_classes']} classes"
  return text


def markdown_table() -> str:
  """The supported entries as a markdown table, one row per dataset,
  threat model and architecture, for docs/interop.md."""
  lines = ["| dataset | threat | architecture | RobustBench names |",
           "|---|---|---|---|"]
  for dataset in DATASETS:
    for threat in THREATS:
      groups: dict[str, list[str]] = {}
      for e in ENTRIES:
        if (e.dataset, e.threat) == (dataset, threat):
          groups.setdefault(describe(e), []).append(f"`{e.name}`")
      for arch in sorted(groups):
        lines.append(f"| {dataset} | {threat} | {arch} | "
                     f"{', '.join(groups[arch])} |")
  return "\n".join(lines)


def counts() -> dict[tuple[str, str], int]:
  """How many entries the table holds per (dataset, threat)."""
  out: dict[tuple[str, str], int] = {}
  for e in ENTRIES:
    out[(e.dataset, e.threat)] = out.get((e.dataset, e.threat), 0) + 1
  return out


if __name__ == "__main__":
  # `python -m robustjax.interop.robustbench`: the table for docs/interop.md.
  print(markdown_table())
