"""The PyTorch side of ``time_to_result.py``: what a PyTorch script does.

  python benchmarks/ttr_torch.py evaluate --weights=W.pt --n=1000
  python benchmarks/ttr_torch.py autoattack --weights=W.pt --n=100
  python benchmarks/ttr_torch.py train --steps=50

One fresh process per run, as a user's script: imports torch (and
torchattacks), reads the decoded CIFAR-10 arrays robustjax reads
(``data/cache/*.npz``), builds the model and loads the state_dict that
``time_to_result.py`` converted from the robustjax checkpoint, runs the work
and prints one JSON line of phase timestamps (seconds since ``TTR_T0``, the
parent's clock just before it started this process) and results.

- ``evaluate``: clean accuracy and torchattacks ``PGD`` (20 steps, L-inf
  8/255, step 2/255, random start) on the first ``--n`` test points, in
  batches of ``--batch`` (512, ``configs/evaluate.py``'s).
- ``autoattack``: the AutoAttack ``standard`` cascade with torchattacks'
  attacks configured as the original runs them (APGD-CE and APGD-T 100
  iterations, 9 targets; FAB-T 100 iterations, 9 targets; Square 5000
  queries, p_init 0.8), each attack run on the points still robust, in
  batches of ``--batch`` (500, ``configs/autoattack.py``'s).
- ``train``: ``--steps`` steps of the quickstart recipe on the ResNet-18 of
  width 0.25: FGSM with random start (uniform in the 8/255 ball, one step of
  10/255), batch 128, random crop (pad 4) and horizontal flip, SGD momentum
  0.9, weight decay 5e-4, a triangular (cyclic) learning rate peaking at
  0.2, then clean accuracy of the first 100 test points and a saved
  state_dict.

The model classes: ``small_cnn`` below (``robustjax/models/small.py``'s
layout), ResNet-18 from ``torch_reference.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time

T0 = float(os.environ.get("TTR_T0", time.time()))
STAMPS: dict[str, float] = {}


def stamp(name: str) -> None:
  """Records ``name`` at the current time, in seconds since ``T0``."""
  STAMPS[name] = time.time() - T0


import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_reference  # noqa: E402

EPS = 8 / 255


class SmallCNN(nn.Module):
  """conv-BN-ReLU x4 with a max-pool after each pair, a 4x4 average pool,
  a 256-unit hidden layer and the head; NCHW floats in [0, 1]."""

  def __init__(self, mean, std, num_classes: int = 10, width: float = 1.0):
    super().__init__()
    ch = [max(1, int(round(c * width))) for c in (32, 32, 64, 64)]
    self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
    cin = 3
    for i, c in enumerate(ch, start=1):
      setattr(self, f"conv{i}", nn.Conv2d(cin, c, 3, padding=1, bias=False))
      setattr(self, f"bn{i}", nn.BatchNorm2d(c, eps=1e-5))
      cin = c
    hidden = max(1, int(round(256 * width)))
    self.fc1 = nn.Linear(cin * 16, hidden)
    self.head = nn.Module()
    self.head.dense = nn.Linear(hidden, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = (x - self.mean) / self.std
    for i in range(1, 5):
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
      if i % 2 == 0:
        x = F.max_pool2d(x, 2)
    x = F.adaptive_avg_pool2d(x, 4)
    x = x.permute(0, 2, 3, 1).flatten(1)  # flax flattens NHWC
    return self.head.dense(F.relu(self.fc1(x)))


def build(spec: dict) -> nn.Module:
  """The PyTorch module of robustjax model ``spec`` (name, width, mean, std)."""
  if spec["name"] == "small_cnn":
    return SmallCNN(spec["mean"], spec["std"], spec["num_classes"],
                    spec["width"])
  if spec["name"] == "resnet18":
    return torch_reference.ResNet((2, 2, 2, 2), spec["num_classes"],
                                  spec["width"], spec["mean"], spec["std"])
  raise SystemExit(f"no PyTorch twin for {spec['name']}")


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The decoded CIFAR-10 ``split`` (uint8 NHWC images, int labels)."""
  cache = os.path.join(os.path.dirname(HERE), "data", "cache")
  name = [f for f in sorted(os.listdir(cache))
          if f.startswith(f"cifar10-jpeg-{split}-")][0]
  with np.load(os.path.join(cache, name)) as d:
    return d["images"], d["labels"]


def to_nchw(images: np.ndarray, contiguous: bool = False) -> torch.Tensor:
  """uint8 NHWC -> float32 NCHW in [0, 1].

  Without ``contiguous`` the result keeps the NHWC memory order (a permuted
  view: PyTorch then runs its convolutions channels_last); with it, plain
  contiguous NCHW (torchattacks' FAB needs that: it calls ``view``).
  """
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
  return x.contiguous() if contiguous else x


def load_model(path: str) -> nn.Module:
  """The converted model at ``path`` (state_dict and spec), in eval mode."""
  blob = torch.load(path, weights_only=False)
  model = build(blob["spec"])
  model.load_state_dict(blob["state_dict"])
  return model.eval()


def evaluate(args) -> dict:
  """Clean and torchattacks PGD-20 accuracy of the first ``n`` test points."""
  import torchattacks
  stamp("imports")
  images, labels = load_split("test")
  x_all, y_all = to_nchw(images[:args.n]), torch.from_numpy(
      labels[:args.n].astype(np.int64))
  stamp("data")
  model = load_model(args.weights)
  stamp("model")
  attack = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=20,
                            random_start=True)
  torch.manual_seed(0)
  clean = adv = 0
  for s in range(0, args.n, args.batch):
    x, y = x_all[s:s + args.batch], y_all[s:s + args.batch]
    with torch.no_grad():
      clean += int((model(x).argmax(1) == y).sum())
    x_adv = attack(x, y)
    with torch.no_grad():
      adv += int((model(x_adv).argmax(1) == y).sum())
  stamp("compute")
  return dict(clean_acc=clean / args.n, adv_acc=adv / args.n)


def autoattack_standard(model: nn.Module) -> list:
  """torchattacks' attacks configured as the original AutoAttack runs them."""
  import torchattacks
  return [
      ("apgd-ce", torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100,
                                    n_restarts=1, loss="ce", seed=0)),
      ("apgd-t", torchattacks.APGDT(model, norm="Linf", eps=EPS, steps=100,
                                    n_restarts=1, n_classes=10, seed=0)),
      ("fab-t", torchattacks.FAB(model, norm="Linf", eps=EPS, steps=100,
                                 n_restarts=1, multi_targeted=True,
                                 n_classes=10, seed=0)),
      ("square", torchattacks.Square(model, norm="Linf", eps=EPS,
                                     n_queries=5000, n_restarts=1,
                                     p_init=0.8, loss="margin",
                                     resc_schedule=False, seed=0)),
  ]


def autoattack(args) -> dict:
  """The AutoAttack cascade on the first ``n`` test points."""
  import torchattacks  # noqa: F401  (timed with the imports)
  stamp("imports")
  images, labels = load_split("test")
  x_all, y_all = to_nchw(images[:args.n], contiguous=True), torch.from_numpy(
      labels[:args.n].astype(np.int64))
  stamp("data")
  model = load_model(args.weights)
  stamp("model")
  attacks = autoattack_standard(model)
  with torch.no_grad():
    robust = torch.cat([model(x_all[s:s + args.batch]).argmax(1)
                        == y_all[s:s + args.batch]
                        for s in range(0, args.n, args.batch)])
  clean = float(robust.float().mean())
  after = {}
  seconds = {}
  for name, attack in attacks:
    t = time.time()
    idx = robust.nonzero().flatten()
    for s in range(0, len(idx), args.batch):
      b = idx[s:s + args.batch]
      x_adv = attack(x_all[b], y_all[b])
      with torch.no_grad():
        robust[b] = model(x_adv).argmax(1) == y_all[b]
    after[name] = float(robust.float().mean())
    seconds[name] = time.time() - t
  stamp("compute")
  return dict(clean_acc=clean, adv_acc=after["square"],
              robust_acc_after=after, attack_seconds=seconds)


def train(args) -> dict:
  """``steps`` steps of the quickstart recipe, then a clean check and a save."""
  stamp("imports")
  images, labels = load_split("train")
  test_images, test_labels = load_split("test")
  stamp("data")
  torch.manual_seed(0)
  spec = dict(name="resnet18", width=0.25, num_classes=10,
              mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
  model = build(spec)
  opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9,
                        weight_decay=5e-4)
  stamp("model")
  rng = np.random.default_rng(0)
  order = rng.permutation(len(images))
  peak, rise = 0.2, max(1, int(0.4 * args.steps))
  model.train()
  for i in range(args.steps):
    lr = peak * (i / rise if i < rise else
                 (args.steps - i) / max(1, args.steps - rise))
    for g in opt.param_groups:
      g["lr"] = lr
    b = order[(i * 128) % len(images):][:128]
    x = to_nchw(images[b])
    y = torch.from_numpy(labels[b].astype(np.int64))
    # random crop with 4-pixel zero padding, then a random horizontal flip
    x = F.pad(x, (4, 4, 4, 4))
    dx, dy = rng.integers(0, 9, 2)
    x = x[:, :, dy:dy + 32, dx:dx + 32]
    flip = torch.from_numpy(rng.random(len(b)) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    delta = torch.empty_like(x).uniform_(-EPS, EPS).requires_grad_(True)
    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    (g,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + 10 / 255 * g.sign()).clamp(-EPS, EPS)
    x_adv = (x + delta).clamp(0, 1)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x_adv), y).backward()
    opt.step()
  model.eval()
  with torch.no_grad():
    x = to_nchw(test_images[:100])
    clean = float((model(x).argmax(1) == torch.from_numpy(
        test_labels[:100].astype(np.int64))).float().mean())
  torch.save(model.state_dict(), os.path.join(args.workdir, "model.pt"))
  stamp("compute")
  return dict(clean_acc=clean)


def main() -> None:
  """Parses the command line, runs one task, prints one JSON line."""
  import argparse
  p = argparse.ArgumentParser()
  p.add_argument("task", choices=("evaluate", "autoattack", "train"))
  p.add_argument("--weights", default="")
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--batch", type=int, default=0)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--workdir", default=".")
  args = p.parse_args()
  args.batch = args.batch or (500 if args.task == "autoattack" else 512)
  result = dict(evaluate=evaluate, autoattack=autoattack,
                train=train)[args.task](args)
  print("TTR " + json.dumps(dict(stamps=STAMPS, result=result,
                                 threads=torch.get_num_threads())),
        flush=True)


if __name__ == "__main__":
  main()
