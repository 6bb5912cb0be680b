"""Adversarial attacks as pure functions of a logits function.

``logits_fn(x) -> [B, C]`` closes over the model's params and BatchNorm
statistics in inference mode, so attacks never touch ``batch_stats``. Images
are floats in [0, 1]; epsilons are in pixel units. See ``pgd.py`` for the
conventions every attack follows.
"""

from robustjax.attacks.losses import (LOSSES, cross_entropy, cw_margin, dlr,
                                      targeted_dlr)
from robustjax.attacks.pgd import (attack_success, fgsm, pgd,
                                   projected_gradient_ascent)

__all__ = [
    "LOSSES",
    "attack_success",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "fgsm",
    "pgd",
    "projected_gradient_ascent",
    "targeted_dlr",
]
