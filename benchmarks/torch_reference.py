"""PyTorch eager reference for the benchmarks: the same network, attack and step.

Written to compute exactly what robustjax computes (see robustjax/models/
resnet.py, robustjax/attacks/pgd.py, robustjax/training/{objectives,step,
optimizer}.py), in the plain eager style of the adversarial-training papers'
PyTorch code:

* CIFAR ResNet-18: normalisation layer, 3x3 stride-1 stem conv + BN + ReLU,
  four stages of two BasicBlocks (64/128/256/512 channels times ``width``,
  rounded as robustjax's ``scale_channels``), 1x1 conv + BN projection
  shortcuts where the shape changes, no max-pool, global average pool, linear
  head. Convs have no bias; BN has eps 1e-5 and momentum 0.1.
* PGD (Linf, CE): uniform start in the eps ball, projected and clipped to
  [0, 1]; each step ``x + step * sign(grad)``, projected and clipped again.
  BatchNorm in eval mode during the attack; gradients w.r.t. the input only
  (``torch.autograd.grad``), like ``jax.grad`` of the input in robustjax.
* Training step: CE of the adversarial batch in train mode (BN batch
  statistics, running averages updated), backward, SGD(momentum 0.9,
  coupled weight decay on every parameter).

Parameter names mirror robustjax's paths (``stem.conv``, ``stage2.block0.
shortcut.bn``, ``head.dense``), so ``load_flax_variables`` copies a flax
variable tree into the module one to one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


def scale_channels(channels: int, width: float) -> int:
  """Same rounding as robustjax.models.layers.scale_channels."""
  return max(1, int(round(channels * width)))


class ConvBN(nn.Module):
  """Bias-free conv (``conv``) followed by BatchNorm (``bn``)."""

  def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride,
                          padding=kernel_size // 2, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.bn(self.conv(x))


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    self.shortcut = (ConvBN(cin, cout, 1, stride)
                     if stride != 1 or cin != cout else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Stage(nn.Module):
  def __init__(self, cin: int, cout: int, num_blocks: int, stride: int):
    super().__init__()
    self.num_blocks = num_blocks
    for i in range(num_blocks):
      setattr(self, f"block{i}",
              BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(self.num_blocks):
      x = getattr(self, f"block{i}")(x)
    return x


class Head(nn.Module):
  def __init__(self, cin: int, num_classes: int):
    super().__init__()
    self.dense = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.dense(x)


class ResNet(nn.Module):
  """CIFAR post-activation ResNet; input NCHW floats in [0, 1]."""

  def __init__(self, stage_sizes=(2, 2, 2, 2), num_classes: int = 10,
               width: float = 1.0, mean=(0.4914, 0.4822, 0.4465),
               std=(0.2471, 0.2435, 0.2616)):
    super().__init__()
    self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
    cin = scale_channels(STAGE_CHANNELS[0], width)
    self.stem = ConvBN(3, cin, 3)
    self.num_stages = len(stage_sizes)
    for i, (size, ch, stride) in enumerate(
        zip(stage_sizes, STAGE_CHANNELS, STAGE_STRIDES)):
      cout = scale_channels(ch, width)
      setattr(self, f"stage{i + 1}", Stage(cin, cout, size, stride))
      cin = cout
    self.head = Head(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = (x - self.mean) / self.std
    x = F.relu(self.stem(x))
    for i in range(self.num_stages):
      x = getattr(self, f"stage{i + 1}")(x)
    return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}.{k}" if prefix else k
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, name))
    else:
      out[name] = np.asarray(v)
  return out


def load_flax_variables(module: ResNet, variables: Any) -> None:
  """Copies robustjax ``{'params', 'batch_stats'}`` into ``module``.

  Conv kernels HWIO -> OIHW, dense kernels [in, out] -> [out, in], BN
  scale/bias -> weight/bias, mean/var -> running_mean/running_var. Raises if
  any tensor of the module is left without a value or any shape differs.
  """
  rename = {"kernel": "weight", "scale": "weight", "bias": "bias",
            "mean": "running_mean", "var": "running_var"}
  values = {}
  for coll in ("params", "batch_stats"):
    for path, arr in _flatten(variables[coll]).items():
      *mod, leaf = path.split(".")
      if leaf == "kernel":
        arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
      values[".".join(mod + [rename[leaf]])] = arr
  state = module.state_dict()
  expected = {k for k in state
              if not k.endswith("num_batches_tracked") and k not in ("mean",
                                                                     "std")}
  if set(values) != expected:
    raise ValueError(f"parameter names differ: only in flax "
                     f"{sorted(set(values) - expected)}, only in torch "
                     f"{sorted(expected - set(values))}")
  with torch.no_grad():
    for k, arr in values.items():
      if tuple(state[k].shape) != arr.shape:
        raise ValueError(f"{k}: torch {tuple(state[k].shape)} vs flax "
                         f"{arr.shape}")
      state[k].copy_(torch.from_numpy(np.array(arr, dtype=np.float32)))


def to_float(images_nhwc_uint8: torch.Tensor, channels_last: bool
             ) -> torch.Tensor:
  """uint8 NHWC -> float32 NCHW in [0, 1] (channels_last strides optional)."""
  x = images_nhwc_uint8.permute(0, 3, 1, 2).float().div_(255.0)
  # The permuted NHWC buffer already has channels_last strides.
  return x if channels_last else x.contiguous()


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
  """Onto the Linf eps ball around x, then [0, 1] (robustjax's order)."""
  return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             step_size: float, steps: int, random_start: bool = True,
             init_delta: torch.Tensor | None = None) -> torch.Tensor:
  """Untargeted Linf CE-PGD on ``model`` as it is (caller sets eval mode).

  Gradient of the batch-summed CE w.r.t. the input only. ``init_delta``
  replaces the uniform start (for parity checks).
  """
  if init_delta is not None:
    x_adv = x + init_delta
  elif random_start:
    x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
  else:
    x_adv = x.clone()
  x_adv = _project(x_adv, x, eps)
  for _ in range(steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_adv)
    with torch.no_grad():
      x_adv = x_adv + step_size * grad.sign()
      x_adv = _project(x_adv, x, eps)
  return x_adv.detach()


def sgd(model: nn.Module, lr: float, momentum: float,
        weight_decay: float) -> torch.optim.SGD:
  """torch.optim.SGD as robustjax's optimizer: momentum, coupled weight
  decay on every parameter (the step twins all train with it)."""
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


class PGDATStep:
  """One Madry PGD-AT step: eval-mode PGD, then a train-mode SGD step."""

  def __init__(self, model: nn.Module, *, eps: float, step_size: float,
               steps: int, lr: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 5e-4, channels_last: bool = False):
    self.model = model
    self.eps, self.step_size, self.steps = eps, step_size, steps
    self.channels_last = channels_last
    self.opt = sgd(model, lr, momentum, weight_decay)

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, float]:
    x = to_float(images, self.channels_last)
    self.model.eval()
    x_adv = pgd_linf(self.model, x, labels, eps=self.eps,
                     step_size=self.step_size, steps=self.steps)
    self.model.train()
    logits = self.model(x_adv)
    loss = F.cross_entropy(logits, labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return {"loss": loss.detach(),
            "adv_accuracy": (logits.detach().argmax(1) == labels).float().mean()}


class PGDEval:
  """Clean + PGD accuracy counts of one batch, as robustjax.evaluation."""

  def __init__(self, model: nn.Module, *, eps: float, step_size: float,
               steps: int, channels_last: bool = False):
    self.model = model
    self.eps, self.step_size, self.steps = eps, step_size, steps
    self.channels_last = channels_last

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    self.model.eval()
    x = to_float(images, self.channels_last)
    with torch.no_grad():
      clean_ok = self.model(x).argmax(1) == labels
    x_adv = pgd_linf(self.model, x, labels, eps=self.eps,
                     step_size=self.step_size, steps=self.steps)
    with torch.no_grad():
      adv_ok = (self.model(x_adv).argmax(1) == labels) & clean_ok
    return {"clean": clean_ok.sum(), "adv": adv_ok.sum()}


# ---------------------------------------------------------------------------
# Twins of the harness's other workloads (benchmarks/run.py).


class StandardStep:
  """One standard (clean CE) training step: train-mode forward, backward,
  SGD; robustjax's ``standard`` objective with the same optimizer."""

  def __init__(self, model: nn.Module, *, lr: float = 0.1,
               momentum: float = 0.9, weight_decay: float = 5e-4,
               channels_last: bool = False):
    self.model = model
    self.channels_last = channels_last
    self.opt = sgd(model, lr, momentum, weight_decay)

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    x = to_float(images, self.channels_last)
    self.model.train()
    logits = self.model(x)
    loss = F.cross_entropy(logits, labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return {"loss": loss.detach()}


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
  """KL(softmax(p) || softmax(q)) per example, as robustjax's ``_kl_rows``."""
  log_p = F.log_softmax(p_logits, dim=1)
  log_q = F.log_softmax(q_logits, dim=1)
  return (log_p.exp() * (log_p - log_q)).sum(1)


def trades_attack(model: nn.Module, x: torch.Tensor, *, eps: float,
                  step_size: float, steps: int,
                  init_noise: torch.Tensor | None = None) -> torch.Tensor:
  """TRADES's inner maximisation as robustjax's ``trades`` objective runs it.

  Label-free: maximises the batch-summed KL(f(x) || f(x')) from
  x + 0.001 N(0, I), projected onto the ball and [0, 1] (robustjax projects
  the start too; TRADES's own code does not clip it), eval-mode BN (the
  caller sets it), gradients w.r.t. the input only.
  """
  with torch.no_grad():
    clean_logits = model(x)
  noise = torch.randn_like(x) if init_noise is None else init_noise
  x_adv = _project(x + 0.001 * noise, x, eps)
  for _ in range(steps):
    x_adv.requires_grad_(True)
    loss = kl_rows(clean_logits, model(x_adv)).sum()
    (grad,) = torch.autograd.grad(loss, x_adv)
    with torch.no_grad():
      x_adv = _project(x_adv + step_size * grad.sign(), x, eps)
  return x_adv.detach()


def trades_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                labels: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
  """Train-mode ``CE(f(x), y) + beta * mean KL(f(x) || f(x_adv))``; clean
  forward first, then adversarial (the BN statistics see both, in that
  order, as in robustjax and the TRADES code). Returns (loss, adv logits)."""
  logits = model(x)
  adv_logits = model(x_adv)
  natural = F.cross_entropy(logits, labels)
  robust = kl_rows(logits, adv_logits).mean()
  return natural + beta * robust, adv_logits


class TRADESStep:
  """One TRADES step (beta 6, KL-PGD in eval mode, then SGD)."""

  def __init__(self, model: nn.Module, *, eps: float, step_size: float,
               steps: int, beta: float = 6.0, lr: float = 0.1,
               momentum: float = 0.9, weight_decay: float = 5e-4,
               channels_last: bool = False):
    self.model = model
    self.eps, self.step_size, self.steps, self.beta = eps, step_size, steps, beta
    self.channels_last = channels_last
    self.opt = sgd(model, lr, momentum, weight_decay)

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    x = to_float(images, self.channels_last)
    self.model.eval()
    x_adv = trades_attack(self.model, x, eps=self.eps,
                          step_size=self.step_size, steps=self.steps)
    self.model.train()
    loss, _ = trades_loss(self.model, x, x_adv, labels, self.beta)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return {"loss": loss.detach()}


class APGDEval:
  """Clean + APGD-CE accuracy counts of one batch with torchattacks' APGD
  (Linf, one restart, rho 0.75, as AutoAttack configures it, but ``steps``
  iterations instead of 100)."""

  def __init__(self, model: nn.Module, *, eps: float, steps: int,
               channels_last: bool = False):
    import torchattacks  # an optional dependency (requirements-dev.txt)
    self.model = model
    self.channels_last = channels_last
    self.attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps,
                                    n_restarts=1, loss="ce", rho=0.75, seed=0)

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    self.model.eval()
    x = to_float(images, self.channels_last)
    with torch.no_grad():
      clean_ok = self.model(x).argmax(1) == labels
    x_adv = self.attack(x, labels)
    with torch.no_grad():
      adv_ok = (self.model(x_adv).argmax(1) == labels) & clean_ok
    return {"clean": clean_ok.sum(), "adv": adv_ok.sum()}


def lerp_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                     alpha: float) -> dict[str, torch.Tensor]:
  """``(1 - alpha) a + alpha b`` for float tensors (weights and BN running
  statistics, like robustjax's ``batch_stats='interpolate'``); other tensors
  (``num_batches_tracked``) from ``a``."""
  return {k: (torch.lerp(v, b[k], alpha) if v.is_floating_point() else v)
          for k, v in a.items()}


class InterpEval:
  """Clean accuracy of the interpolated model at each alpha on one batch:
  state_dict lerp, ``load_state_dict``, eval-mode forward."""

  def __init__(self, model: nn.Module, state_a: dict[str, torch.Tensor],
               state_b: dict[str, torch.Tensor], alphas, *,
               channels_last: bool = False):
    self.model = model
    self.state_a, self.state_b = state_a, state_b
    self.alphas = tuple(alphas)
    self.channels_last = channels_last

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[float, torch.Tensor]:
    self.model.eval()
    x = to_float(images, self.channels_last)
    out = {}
    for alpha in self.alphas:
      self.model.load_state_dict(
          lerp_state_dicts(self.state_a, self.state_b, alpha))
      with torch.no_grad():
        out[alpha] = (self.model(x).argmax(1) == labels).sum()
    return out


# ---------------------------------------------------------------------------
# WRN-34-10 for the GPU benchmark (benchmarks/gpu.py): robustjax's
# pre-activation WideResNet (robustjax/models/wide_resnet.py), i.e. the
# TRADES/MART WideResNet with drop rate 0. Same structure and parameter count
# (checked by gpu.py); not used for a weight-for-weight comparison.


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut (a bias-free 1x1 conv on the
  pre-activated input when the shape changes); no ReLU after the sum."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, eps=1e-5, momentum=0.1)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
    self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                     if stride != 1 or cin != cout else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pre = F.relu(self.bn1(x))
    short = x if self.shortcut is None else self.shortcut(pre)
    y = self.conv1(pre)
    y = self.conv2(F.relu(self.bn2(y)))
    return y + short


class WideResNet(nn.Module):
  """WRN-depth-k: 16-channel stem, three stages of (depth - 4) / 6
  pre-activation blocks (16k, 32k, 64k channels times ``width``; strides 1,
  2, 2), final BN-ReLU, global average pool, linear head."""

  def __init__(self, depth: int = 34, widen_factor: int = 10,
               num_classes: int = 10, width: float = 1.0,
               mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
    super().__init__()
    self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
    n = (depth - 4) // 6
    cin = scale_channels(16, width)
    self.stem = nn.Conv2d(3, cin, 3, 1, padding=1, bias=False)
    blocks = []
    for base, stride in zip((16, 32, 64), (1, 2, 2)):
      cout = scale_channels(base * widen_factor, width)
      for i in range(n):
        blocks.append(PreActBlock(cin, cout, stride if i == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.final_bn = nn.BatchNorm2d(cin, eps=1e-5, momentum=0.1)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.stem((x - self.mean) / self.std)
    x = F.relu(self.final_bn(self.blocks(x)))
    return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class AMPPGDATStep:
  """The PGD-AT step (``PGDATStep``) under ``torch.autocast`` (bfloat16 by
  default) for accelerators: the attack's and the loss's forward passes run
  in the autocast dtype, weights, input gradients and the SGD update stay
  float32 (bfloat16 needs no loss scaling). Feed it channels_last models."""

  def __init__(self, model: nn.Module, *, eps: float, step_size: float,
               steps: int, device_type: str = "cuda",
               dtype: torch.dtype = torch.bfloat16, lr: float = 0.1,
               momentum: float = 0.9, weight_decay: float = 5e-4):
    self.model = model
    self.eps, self.step_size, self.steps = eps, step_size, steps
    self.autocast = lambda: torch.autocast(device_type, dtype=dtype)  # noqa: E731
    self.opt = sgd(model, lr, momentum, weight_decay)

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    x = to_float(images, channels_last=True)
    self.model.eval()
    with self.autocast():
      x_adv = pgd_linf(self.model, x, labels, eps=self.eps,
                       step_size=self.step_size, steps=self.steps)
    self.model.train()
    with self.autocast():
      logits = self.model(x_adv)
      loss = F.cross_entropy(logits.float(), labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return {"loss": loss.detach()}
