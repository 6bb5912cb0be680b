"""Image classifiers for CIFAR-sized inputs, built by name.

Usage::

  from robustjax import models
  model = models.create_model("resnet18", num_classes=10, width=1.0)
  variables = model.init(key, x, train=False)  # {'params', 'batch_stats'}
  logits = model.apply(variables, x, train=False)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=["batch_stats"])

  spec = models.model_spec("resnet18", 1.0, 10)   # saved with checkpoints
  model = models.build_model(spec)                # the same network back
  models.create_model("wrn", depth=34, widen=20, activation="silu",
                      padding="same", mean=(0, 0, 0), std=(1, 1, 1))

Contract shared by every model:

* Input ``x``: float [B, H, W, 3] in [0, 1] (NHWC), H = W = 32 or 64.
* The first operation is ``(x - mean) / std`` with constant mean/std (not
  parameters), so attacks and the epsilon ball live in [0, 1] pixel space.
* Output: float32 logits [B, num_classes], whatever the compute ``dtype``;
  parameters are always float32.
* BatchNorm follows PyTorch (momentum 0.1 in torch terms, eps 1e-5) and uses
  running statistics when ``train=False``. BN-free models (``vgg16``,
  ``vgg16_rws``) have no ``batch_stats`` collection;
  ``mutable=["batch_stats"]`` then returns empty updates, so callers need no
  special case.
* ``width`` multiplies every channel count (rounded, at least 1).
* Options (``model_options(name)``): ``wrn`` takes ``depth`` (6n + 4) and
  ``widen``; every WideResNet ``activation`` (``relu``, ``silu`` =
  ``swish``) and ``padding`` (``torch``: symmetric, ``same``: TensorFlow's
  SAME, which differs for strided convs); ``preact_resnet18`` those two plus
  ``shortcut`` (``preact``, ``raw``, ``raw3x3``) and ``final_bn``. The
  model spec records all of them, with mean and std.

Parameter naming scheme (every submodule is named; no ``Conv_0`` names):

* ``resnet18``, ``resnet34``: ``stem/conv``, ``stem/bn``,
  ``stage{1-4}/block{j}/{conv1,bn1,conv2,bn2}``,
  ``stage{s}/block0/shortcut/{conv,bn}`` (where the shape changes),
  ``head/dense``.
* ``preact_resnet18``: ``stem/conv``, ``stage{1-4}/block{j}/{bn1,conv1,bn2,
  conv2}``, ``stage{s}/block0/shortcut/conv``, ``final_bn``, ``head/dense``.
* ``wrn``, ``wrn34_10``, ``wrn28_10``, ``wrn70_16``: as
  ``preact_resnet18`` with stages 1-3.
* ``vit_b`` (ViT-B/4, no BatchNorm): ``embed/{patch,cls,pos}``,
  ``encoder/layer{i}/{ln1,attn/{query,key,value,out},ln2,mlp/{fc1,fc2}}``,
  ``encoder/ln``, ``head/dense``; ``width`` scales the hidden size (heads of
  64 dimensions).
* ``vgg16``, ``vgg16_rws``: ``features/conv{0-12}`` (convs counted in order),
  ``head/dense``.
* ``small_cnn``: ``conv{1-4}``, ``bn{1-4}``, ``fc1``, ``head/dense``.

Stages and blocks count as in the papers' code: stages from 1, blocks within
a stage from 0. Adding a model: write a factory
``(num_classes, width, dtype, mean, std, **options) -> nn.Module`` decorated
with ``@register("name", options={...defaults})`` in a module imported
below.
"""

from robustjax.models.layers import CIFAR10_MEAN, CIFAR10_STD
from robustjax.models.registry import (COMPUTE_DTYPES, available_models,
                                       build_model, compute_dtype,
                                       create_model, full_spec, model_options,
                                       model_spec, register)

# Imported for their @register side effect: they fill the registry.
from robustjax.models import resnet as _resnet  # noqa: F401,E402
from robustjax.models import small as _small  # noqa: F401,E402
from robustjax.models import vgg as _vgg  # noqa: F401,E402
from robustjax.models import vit as _vit  # noqa: F401,E402
from robustjax.models import wide_resnet as _wide_resnet  # noqa: F401,E402

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "COMPUTE_DTYPES",
    "available_models",
    "build_model",
    "compute_dtype",
    "create_model",
    "full_spec",
    "model_options",
    "model_spec",
    "register",
]
