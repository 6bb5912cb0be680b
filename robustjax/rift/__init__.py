"""RiFT (Zhu et al., ICCV 2023): robust critical fine-tuning.

Three stages, each a function of arrays and pytrees (no model class needed
beyond a Flax ``apply``, no config):

1. ``mrc`` (``mrc.py``): Module Robust Criticality of every conv/dense
   kernel, the largest increase of the adversarial cross-entropy when only
   that kernel moves by ``delta`` with ``||delta||_F <= epsilon * ||w||_F``.
   As in the reference code (microsoft/robustlearn RiFT/main.py
   ``layer_sharpness``): the adversarial set is made once against the
   robust model and held fixed (``adversarial_set``); plain SGD ascent with
   lr 1 over shuffled batches for 10 epochs of 20 steps each (the
   reference's batches of 512 over 10,000 test points, whatever the size of
   our set: ``ascent_plan``), the projection applied only at the end of
   each epoch, a full evaluation after each projection, and MRC = the
   maximum of those 10 losses minus the unperturbed loss. BatchNorm stays
   in inference mode throughout.
2. ``choose_module`` (``modules.py``) then ``finetune`` (``finetune.py``):
   train only the least critical kernel on clean data (SGD momentum 0.9,
   weight decay 5e-4 on that kernel only, lr 1e-3 x0.1 at half the epochs),
   BatchNorm running statistics of the whole network re-estimated on the
   clean batches (``bn='train'``, the reference's ``model.train()``;
   ``'keep_a'`` keeps the robust model's), keeping the epoch with the best
   clean accuracy.
3. ``interpolate_states`` over an alpha grid and ``select_alpha``
   (``selection.py``): the alpha with the best clean accuracy whose robust
   accuracy stays within ``tolerance`` of the robust model's.

The ``rift`` task (``robustjax/tasks/rift.py``) chains the three behind
``launch.py``; see docs/rift.md and configs/rift.py. Module paths are layer
paths such as ``stage2/block1/conv2``; a kernel leaf is
``<module>/kernel``.
"""

from robustjax.rift.finetune import finetune
from robustjax.rift.modules import (CHOICES, KERNEL, check_module,
                                    choose_module, kernel_modules)
from robustjax.rift.mrc import (REFERENCE_STEPS_PER_EPOCH, adversarial_set,
                                ascent_plan, epoch_batches, mrc, project)
from robustjax.rift.selection import (check_alphas, interpolate_states,
                                      select_alpha)

__all__ = [
    "CHOICES", "KERNEL", "REFERENCE_STEPS_PER_EPOCH", "adversarial_set",
    "ascent_plan", "check_alphas", "check_module", "choose_module",
    "epoch_batches", "finetune", "interpolate_states", "kernel_modules",
    "mrc", "project", "select_alpha",
]
