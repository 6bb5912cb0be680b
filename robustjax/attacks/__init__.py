"""Adversarial attacks as pure functions of a logits function.

``logits_fn(x) -> [B, C]`` closes over the model's params and BatchNorm
statistics in inference mode, so attacks never touch ``batch_stats``. Images
are floats in [0, 1]; epsilons are in pixel units. See ``pgd.py`` for the
conventions every attack follows.

AutoAttack's pieces live in submodules: ``apgd.apgd`` (APGD-CE / DLR /
targeted DLR), ``fab.fab_targeted`` (FAB-T), ``square.square`` and the
cascade ``run_autoattack`` (``autoattack.py``, exported here).
"""

from robustjax.attacks.losses import (LOSSES, cross_entropy, cw_margin, dlr,
                                      targeted_dlr)
from robustjax.attacks.autoattack import (AutoAttackConfig, config_for,
                                          run_autoattack)
from robustjax.attacks.fab import fab_targeted
from robustjax.attacks.pgd import (attack_success, fgsm, pgd,
                                   projected_gradient_ascent)

__all__ = [
    "AutoAttackConfig",
    "LOSSES",
    "config_for",
    "fab_targeted",
    "run_autoattack",
    "attack_success",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "fgsm",
    "pgd",
    "projected_gradient_ascent",
    "targeted_dlr",
]
