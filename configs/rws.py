r"""Robust weight signatures (RWS): the training recipe and the analysis.

The recipe (VITA-Group/Robust_Weight_Signatures, see docs/rws.md): one
start theta_pre; from it a clean model and one model per corruption, each
fine-tuned on 100% corrupted training data of that type (severity 5), all
with the same model class and so the same input normalisation:

  python launch.py --config=configs/rws.py:pre --workdir=workdirs/rws/pre
  python launch.py --config=configs/rws.py:clean,init=workdirs/rws/pre \
      --workdir=workdirs/rws/clean
  python launch.py --config=configs/rws.py:corruption=fog,init=workdirs/rws/pre \
      --workdir=workdirs/rws/fog
  python launch.py --config=configs/rws.py:analyze,root=workdirs/rws,corruptions=fog+contrast \
      --workdir=workdirs/rws/analysis

``pre`` trains theta_pre from scratch on clean CIFAR-10 (the reference
starts from ImageNet weights, which this repository does not have).
``clean`` / ``corruption=NAME`` fine-tune from ``init`` with the
reference's optimiser (SGD lr 0.01, momentum 0.9, wd 5e-4, x0.1 at 40% and
80% of training; the reference: 50 epochs, x0.1 at epochs 20 and 40);
``epochs=E`` shortens it. The test split of a corruption model is
corrupted the same way, so its final line reports corrupted accuracy.
``analyze`` runs the ``rws`` task: it prints one line per coefficient and
corruption (``rws fog coefficient 1.00: corrupted 61.0% | clean 80.2%``),
one summary line per corruption, the composition lines, and writes
``WORKDIR/report.json``, ``signatures/*.rws`` and three PNGs.

Arg keys: ``model=vgg16_rws``, ``width=0.25``, ``epochs=E``, ``severity=5``,
``k=7`` (layers kept), ``bits=0`` (0 = float32), ``n=500`` test points,
``target=DIR`` (patch another clean model from the same theta_pre:
transfer), ``classes=0-4`` (``dataset.classes``: train or evaluate on those
classes only, relabelled 0..K-1; ``0+2+4`` for a list), ``smoke``.

Transfer across datasets (docs/rws.md): signatures extracted from models
fine-tuned on one class subset patch a clean model fine-tuned on another
from the same theta_pre; a theta_pre with another class count gets a fresh
head when fine-tuned:

  python launch.py --config=configs/rws.py:clean,init=workdirs/rws/pre,classes=5-9 \
      --workdir=workdirs/rws_transfer/B/clean
  python launch.py --config=configs/rws.py:analyze,root=workdirs/rws_transfer/A,corruptions=fog,target=workdirs/rws_transfer/B/clean \
      --config.theta_pre=workdirs/rws/pre --workdir=workdirs/rws_transfer/analysis_B

(``root`` holds A's ``clean`` and corruption models; the target is
evaluated on the classes recorded in its checkpoint.) The measured run is
``experiments/rws_cifar10.py --transfer``.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, model="vgg16_rws", width=0.25, epochs=0.0,
                          severity=5, init="", corruption="", root="",
                          corruptions="", k=7, bits=0, n=500, target="",
                          classes="")
  # "0+2+4" in the arg (its items are comma-separated) -> "0,2,4".
  classes = str(args["classes"]).replace("+", ",")
  smoke = bool(args.get("smoke"))
  if args.get("analyze"):
    return _analyze(args, classes, smoke)
  c = common.base_config()
  c.dataset.classes = classes
  c.model.update(name=args["model"], width=float(args["width"]))
  common.set_objective(c, "standard")
  c.eval.attack = common.pgd_attack(0)        # clean accuracy only
  c.final_eval.attack = common.pgd_attack(0)
  c.checkpoint.best_metric = "clean_acc"
  c.eval.every_steps = 1000
  if args.get("pre"):
    c.num_epochs = float(args["epochs"]) or 30.0
    c.optimizer.update(lr=0.05, schedule="cosine", weight_decay=5e-4)
  else:
    c.task = "rws_finetune"
    c.init_from = str(args["init"])
    c.num_epochs = float(args["epochs"]) or 50.0
    c.optimizer.update(lr=0.01, momentum=0.9, weight_decay=5e-4,
                       schedule="piecewise", boundaries=(0.4, 0.8),
                       decay=0.1)
    if args["corruption"]:
      c.dataset.corruption.update(names=str(args["corruption"]),
                                  severities=(int(args["severity"]),),
                                  mode="single", splits="train,test")
  if smoke:
    common.shrink_for_smoke(c)
    c.eval.attack.steps = 0
    c.final_eval.attack.steps = 0
    c.model.name = args["model"] if "model=" in (arg or "") else "small_cnn"
  return c


def _analyze(args: dict, classes: str, smoke: bool
             ) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "rws"
  c.seed = 0
  c.num_devices = 0
  root = str(args["root"]).rstrip("/")
  names = [s for s in str(args["corruptions"]).split("+") if s]
  c.theta_pre = f"{root}/pre" if root else ""
  c.clean = f"{root}/clean" if root else ""
  c.robust = ",".join(f"{n}={root}/{n}" for n in names) if root else ""
  c.target = str(args["target"])      # "" = the clean model itself
  c.first_k = int(args["k"])          # layers kept, by depth
  c.include = ""                      # or comma-separated path patterns
  c.bits = int(args["bits"])
  c.coefficients = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
  c.composition = "linear"            # linear (1 each) | reference ((1/K)^2)
  c.severity = int(args["severity"])
  # average (the reference's rule: BN and shortcut tensors averaged over
  # the robust models, statistics re-estimated on the corrupted training
  # data; a no-op for BN-free VGG-16) | keep_a | recompute (clean data).
  c.batch_stats = "average"
  c.bn_batches = 0                    # per corruption; 0 = one full pass
  c.bn_batch_size = 128
  # classes: "" = the classes the target model was trained on (recorded
  # in its checkpoint; all when it recorded none).
  c.dataset = dict(name="cifar10", source="embedded", data_dir="",
                   split="test", classes=classes)
  c.eval = dict(num_examples=int(args["n"]), batch_size=100)
  if smoke:
    c.coefficients = (0.0, 1.0, 1.5)
    c.eval.update(num_examples=32, batch_size=32)
    c.bn_batches, c.bn_batch_size = 2, 32
  return c
