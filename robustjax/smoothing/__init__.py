"""Adaptive smoothing: mixing a standard and a robust classifier in output
space (Bai, Anderson, Kim, Sojoudi).

==================  ========================================================
``mixture``         the log-mixture of two models' softmax outputs (stable,
                    float32) and ``MixedClassifier``, the fixed-weight
                    mixture as a model
``certificate``     the robust model's probability margin and the points
                    certified at weight ``a``
``mixing_net``      the V4 mixing network and the ``raw -> gamma -> a`` map
``adaptive``        ``AdaptiveClassifier``: the weight ``a(x)`` from the
                    mixing network on both models' features
``evaluate``        clean, AutoAttack, transfer and worst-case accuracy of a
                    mixture, and its certified fraction
``training``        the mixing network's loss, randomised adaptive attacks
                    and training loop
==================  ========================================================
"""

from robustjax.smoothing.adaptive import (AdaptiveClassifier,
                                          check_mixer_fit)
from robustjax.smoothing.certificate import (certified, required_margin,
                                             robust_margin)
from robustjax.smoothing.mixing_net import (EVAL_CONSTANTS, TRAIN_CONSTANTS,
                                            GammaConstants, MixingNet)
from robustjax.smoothing.mixture import (MixedClassifier, check_alpha,
                                         mix_log_probs, mixture_variables)

__all__ = [
    "AdaptiveClassifier",
    "EVAL_CONSTANTS",
    "GammaConstants",
    "MixedClassifier",
    "MixingNet",
    "TRAIN_CONSTANTS",
    "certified",
    "check_alpha",
    "check_mixer_fit",
    "mix_log_probs",
    "mixture_variables",
    "required_margin",
    "robust_margin",
]
