"""Adversarial attacks as pure functions of a logits function.

``logits_fn(x) -> [B, C]`` closes over the model's params and BatchNorm
statistics in inference mode, so attacks never touch ``batch_stats``. Images
are floats in [0, 1]; epsilons are in pixel units. See ``pgd.py`` for the
conventions every attack follows.

Every attack is also registered by name (``registry.py``): configs name an
attack and its parameters (``{"name": "apgd-ce", "eps": 8/255}``) and
``build`` returns a callable ``Attack``. Registered: ``none``, ``pgd``,
``fgsm`` (``pgd.py``), ``apgd-ce``, ``apgd-dlr``, ``apgd-t`` (``apgd.py``),
``fab-t`` (``fab.py``) and ``square`` (``square.py``). AutoAttack's cascade
(``autoattack.py``) runs the stepwise forms of the last five; evaluation
runs ``pgd`` and the untargeted APGDs in compiled chunks
(``Attack.chunked``).
"""

from robustjax.attacks import apgd, fab, square  # noqa: F401  (registers)
from robustjax.attacks.autoattack import (AutoAttackConfig, config_for,
                                          run_autoattack)
from robustjax.attacks.fab import fab_targeted
from robustjax.attacks.losses import (LOSSES, cross_entropy, cw_margin, dlr,
                                      kl_divergence, targeted_dlr)
from robustjax.attacks.pgd import (attack_success, fgsm, pgd,
                                   projected_gradient_ascent)
from robustjax.attacks.registry import (Attack, available_attacks, build,
                                        defaults, register)

__all__ = [
    "Attack",
    "AutoAttackConfig",
    "LOSSES",
    "attack_success",
    "available_attacks",
    "build",
    "config_for",
    "cross_entropy",
    "cw_margin",
    "defaults",
    "dlr",
    "fab_targeted",
    "fgsm",
    "kl_divergence",
    "pgd",
    "projected_gradient_ascent",
    "register",
    "run_autoattack",
    "targeted_dlr",
]
