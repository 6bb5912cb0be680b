"""PyTorch / RobustBench interop: converted models compute what the
originals compute.

The references are RobustBench 1.1.1's own architecture files, loaded by
file path so that the package's ``__init__`` (which needs timm, torchvision,
gdown, pandas) never runs. Small instances of each supported class get
random weights and random BatchNorm statistics; in eval mode the converted
logits agree to 1e-5 (relative to the largest logit) and the input
gradients of the cross-entropy to 1e-4 (relative to the largest gradient
entry); exporting back gives a state_dict the class loads with
``strict=True`` and that equals the original bit for bit. Negative
controls show that the padding, activation and shortcut options matter.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import models
from robustjax.errors import ConfigError
from robustjax.interop import archs, convert, files, robustbench

torch = pytest.importorskip("torch", reason="PyTorch is a test dependency "
                            "(requirements-dev.txt)")
nn = torch.nn

from robustbench_reference import architecture_file, randomise  # noqa: E402

LOGIT_RTOL = 1e-5
# The input gradient is looser than the logits: a ReLU whose input lies within
# float rounding of zero can fall on either side in the two libraries'
# summation orders, which moves the gradient by up to a few 1e-3 of its
# largest entry (3.3e-3 measured on an AVX2 host, 1e-4 on an AVX-512 one).
# A conversion error shows in the logits, far above LOGIT_RTOL.
GRAD_RTOL = 1e-2


@pytest.fixture(scope="module")
def rb():
  # One thread: PyTorch's default pool oversubscribes a small shared
  # machine (40x slower here) and these models are tiny.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield {name: architecture_file(name)
         for name in ("wide_resnet", "dm_wide_resnet", "resnet")}
  torch.set_num_threads(threads)


def _with_buffers(base: type, mean, std) -> type:
  """A subclass of ``base`` normalising inside with ``mu``/``sigma``
  buffers, as RobustBench's Rice2020Overfitting / Wong2020Fast do."""

  class Normalised(base):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.register_buffer("mu", torch.tensor(mean).view(1, 3, 1, 1))
      self.register_buffer("sigma", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
      return super().forward((x - self.mu) / self.sigma)

  return Normalised


def _build(rb, case: str, num_classes: int):
  """(torch model, arch name, from_torch options, to_torch options)."""
  dm = rb["dm_wide_resnet"]
  c100 = num_classes == 100
  dm_stats = dict(mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD) if c100 else {}
  dm_opts = dict(mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD) if c100 else {}
  if case == "wrn16_2":
    return (rb["wide_resnet"].WideResNet(
        depth=16, num_classes=num_classes, widen_factor=2, sub_block1=True),
        "wide_resnet", {}, {"sub_block1": True})
  if case == "wrn16_2_mu_sigma":
    cls = _with_buffers(rb["wide_resnet"].WideResNet, (0.49, 0.48, 0.45),
                        (0.25, 0.24, 0.26))
    return (cls(depth=16, num_classes=num_classes, widen_factor=2),
            "wide_resnet", {}, {})
  if case in ("dm_wrn16_2_swish", "dm_wrn16_2_silu"):
    act = dm.Swish if case.endswith("swish") else nn.SiLU
    return (dm.DMWideResNet(num_classes=num_classes, depth=16, width=2,
                            activation_fn=act, **dm_stats),
            "dm_wide_resnet", dict(activation=case.rsplit("_", 1)[1],
                                   **dm_opts), {})
  if case == "dm_preact18":
    return (dm.DMPreActResNet(num_classes=num_classes, depth=18, width=0,
                              activation_fn=dm.Swish, **dm_stats),
            "dm_preact_resnet18", dict(activation="swish", **dm_opts), {})
  res = rb["resnet"]
  if case == "resnet18":
    return (res.ResNet(res.BasicBlock, [2, 2, 2, 2], num_classes=num_classes),
            "resnet18", {}, {})
  if case == "preact18":
    cls = _with_buffers(res.PreActResNet, (0.4914, 0.4822, 0.4465),
                        (0.2471, 0.2435, 0.2616))
    return (cls(res.PreActBlock, [2, 2, 2, 2], num_classes=num_classes),
            "preact_resnet18", {}, {})
  if case == "preact18_v2":
    return (res.PreActResNet(res.PreActBlockV2, [2, 2, 2, 2],
                             num_classes=num_classes, bn_before_fc=True),
            "preact_resnet18_v2", {}, {})
  raise AssertionError(case)


def _torch_outputs(model, x: np.ndarray, y: np.ndarray):
  """Logits [B, K] and d mean-CE / d x as NHWC [B, H, W, 3]."""
  xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  xt.requires_grad_(True)
  logits = model(xt)
  loss = nn.functional.cross_entropy(logits, torch.from_numpy(y))
  (grad,) = torch.autograd.grad(loss, xt)
  return (logits.detach().numpy(),
          np.transpose(grad.numpy(), (0, 2, 3, 1)))


def _jax_logits(spec, variables, x: np.ndarray) -> np.ndarray:
  model = models.build_model(spec)
  return np.asarray(jax.jit(lambda xb: model.apply(variables, xb,
                                                   train=False))(x))


def _jax_outputs(spec, variables, x: np.ndarray, y: np.ndarray):
  model = models.build_model(spec)

  def loss_fn(xb):
    logits = model.apply(variables, xb, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, y).mean(), logits

  (_, logits), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      jnp.asarray(x))
  return np.asarray(logits), np.asarray(grad)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| relative to max(1e-12, max |b|)."""
  return float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(b)))))


def _data(num_classes: int, n: int = 4):
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, num_classes, n).astype(np.int64)
  return x, y


CASES = ("wrn16_2", "dm_wrn16_2_swish", "dm_wrn16_2_silu", "resnet18",
         "preact18", "preact18_v2", "dm_preact18")


@pytest.mark.parametrize("case,num_classes",
                         [(c, k) for c in CASES for k in (10, 100)]
                         + [("wrn16_2_mu_sigma", 10)])
def test_converted_model_equals_robustbench_class(rb, case, num_classes):
  torch.manual_seed(0)
  model, arch, options, export = _build(rb, case, num_classes)
  randomise(model, seed=1)
  original = model.state_dict()
  variables, spec = convert.from_torch(original, arch=arch, **options)
  assert spec["num_classes"] == num_classes
  x, y = _data(num_classes)
  t_logits, t_grad = _torch_outputs(model, x, y)
  j_logits, j_grad = _jax_outputs(spec, variables, x, y)
  logit_err, grad_err = _rel(j_logits, t_logits), _rel(j_grad, t_grad)
  print(f"\n{case} ({num_classes} classes): logits rel {logit_err:.2e}, "
        f"input gradient rel {grad_err:.2e}")
  assert logit_err <= LOGIT_RTOL
  assert grad_err <= GRAD_RTOL

  # Export, load into a fresh instance with strict=True, compare bits.
  exported = convert.to_torch(variables, spec, arch=arch, **export)
  torch.manual_seed(123)
  fresh, _, _, _ = _build(rb, case, num_classes)
  fresh.load_state_dict(exported, strict=True)
  reloaded = fresh.state_dict()
  assert set(reloaded) == set(original)
  for key, value in original.items():
    assert value.dtype == reloaded[key].dtype, key
    if key.startswith("sub_block1."):  # the unused copy: block1 again
      assert torch.equal(reloaded[key], original["block1." + key[11:]]), key
    else:
      assert torch.equal(value, reloaded[key]), key
  with torch.no_grad():
    xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
    assert torch.equal(fresh.eval()(xt), model(xt))


def _dm_small(rb, activation="swish"):
  torch.manual_seed(0)
  model, arch, options, _ = _build(rb, f"dm_wrn16_2_{activation}", 10)
  randomise(model, seed=1)
  variables, spec = convert.from_torch(model.state_dict(), arch=arch,
                                       **options)
  return model, variables, spec


@pytest.mark.parametrize("change", [dict(padding="torch"),
                                    dict(activation="relu")])
def test_wrong_padding_or_activation_fails_the_logits_check(rb, change):
  """Negative control: the same weights under the TRADES padding or ReLU
  no longer compute DeepMind's network."""
  model, variables, spec = _dm_small(rb)
  x, y = _data(10)
  t_logits, _ = _torch_outputs(model, x, y)
  right = _jax_logits(spec, variables, x)
  wrong = _jax_logits(dict(spec, **change), variables, x)
  assert _rel(right, t_logits) <= LOGIT_RTOL
  assert _rel(wrong, t_logits) > 100 * LOGIT_RTOL, change


@pytest.mark.parametrize("case,change", [
    ("preact18", dict(shortcut="preact")),
    ("dm_preact18", dict(shortcut="raw")),
])
def test_wrong_shortcut_fails_the_logits_check(rb, case, change):
  torch.manual_seed(0)
  model, arch, options, _ = _build(rb, case, 10)
  randomise(model, seed=1)
  variables, spec = convert.from_torch(model.state_dict(), arch=arch,
                                       **options)
  x, y = _data(10, n=2)
  t_logits, _ = _torch_outputs(model, x, y)
  if change["shortcut"] == "raw":  # the 3x3 kernel cannot be a 1x1 one
    with pytest.raises(Exception):
      _jax_logits(dict(spec, **change), variables, x)
    return
  wrong = _jax_logits(dict(spec, **change), variables, x)
  assert _rel(wrong, t_logits) > 100 * LOGIT_RTOL


def test_spec_records_the_options(rb):
  _, _, spec = _dm_small(rb, "silu")
  assert spec == models.full_spec(spec)
  assert (spec["name"], spec["depth"], spec["widen"], spec["activation"],
          spec["padding"]) == ("wrn", 16, 2, "silu", "same")
  assert spec["mean"] == list(models.CIFAR10_MEAN)


def test_a_model_trained_here_exports_to_its_pytorch_class(rb):
  """robustjax's default preact_resnet18 (CIFAR-10 normalisation inside) is
  PreActBlockV2 with a final BN; its export carries the normalisation as
  mu/sigma buffers and loads strictly into that class with buffers."""
  spec = models.model_spec("preact_resnet18", 1.0, 10)
  model = models.build_model(spec)
  x, _ = _data(10, n=2)
  variables = jax.jit(lambda: model.init(jax.random.key(0), x,
                                         train=False))()
  exported = convert.to_torch(variables, spec)
  assert exported["mu"].shape == (1, 3, 1, 1)
  res = rb["resnet"]
  torch_model = _with_buffers(res.PreActResNet, (0.0,) * 3, (1.0,) * 3)(
      res.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)
  torch_model.load_state_dict(exported, strict=True)
  with torch.no_grad():
    theirs = torch_model.eval()(torch.from_numpy(
        np.transpose(x, (0, 3, 1, 2)).copy())).numpy()
  assert _rel(_jax_logits(spec, variables, x), theirs) <= LOGIT_RTOL
  with pytest.raises(ConfigError, match="width 0.25 has no PyTorch class"):
    convert.to_torch(variables, models.model_spec("preact_resnet18", 0.25,
                                                  10))
  with pytest.raises(ConfigError, match="export it as preact_resnet18_v2"):
    convert.to_torch(variables, spec, arch="preact_resnet18")
  with pytest.raises(ConfigError, match="no supported PyTorch class"):
    convert.to_torch(variables, dict(spec, activation="silu"))


# --- state_dict handling and bad input --------------------------------------


def test_strip_prefixes_strips_leading_prefixes_only():
  sd = {"module.conv1.weight": 1, "model.fc.bias": 2,
        "module.model.bn1.weight": 3, "layer.model.x": 4}
  assert convert.strip_prefixes(sd) == {"conv1.weight": 1, "fc.bias": 2,
                                        "bn1.weight": 3, "layer.model.x": 4}


def test_mismatched_state_dict_lists_the_first_mismatches(rb):
  model, arch, options, _ = _build(rb, "wrn16_2", 10)
  sd = dict(model.state_dict())
  with pytest.raises(ConfigError) as err:
    convert.from_torch(sd, arch="wide_resnet", depth=22)
  msg = str(err.value)
  assert "\n" not in msg and "missing: block1.layer.2.bn1.weight" in msg
  with pytest.raises(ConfigError, match="unexpected: init_conv.weight"):
    dm_model, _, _, _ = _build(rb, "dm_wrn16_2_swish", 10)
    convert.from_torch(dm_model.state_dict(), arch="wide_resnet")
  with pytest.raises(ConfigError, match=r"2 shape mismatch: fc.weight "
                     r"\(10, 128\) \(expects \(100, 128\)\)"):
    convert.from_torch(sd, arch="wide_resnet", num_classes=100)
  with pytest.raises(ConfigError, match="unknown architecture 'wrn_nope'"):
    convert.from_torch(sd, arch="wrn_nope")
  with pytest.raises(ConfigError, match="has no option activation"):
    convert.from_torch(sd, arch="wide_resnet", activation="silu")


def test_read_state_dict_finds_the_weights(tmp_path):
  weights = {"module.conv1.weight": torch.ones(2, 3, 3, 3),
             "model.fc.bias": torch.arange(3, dtype=torch.bfloat16)}
  for i, wrap in enumerate([weights, {"state_dict": weights, "epoch": 3},
                            {"last": weights}]):
    path = str(tmp_path / f"w{i}.pt")
    torch.save(wrap, path)
    sd = files.read_state_dict(path)
    assert set(sd) == set(weights)
    assert sd["model.fc.bias"].dtype == np.float32


def test_bad_files_are_refused_in_one_line(tmp_path):
  good = tmp_path / "good.pt"
  torch.save({"conv1.weight": torch.ones(3)}, str(good))
  blob = good.read_bytes()
  (tmp_path / "truncated.pt").write_bytes(blob[:len(blob) // 2])
  (tmp_path / "text.pt").write_text("not a checkpoint\n")
  torch.save({"state_dict": {"a": torch.ones(1)},
              "args": pathlib.PurePosixPath("x")},
             str(tmp_path / "pickle.pt"))
  torch.save({"epoch": 3}, str(tmp_path / "empty.pt"))
  expected = {"truncated.pt": "truncated or corrupt",
              "text.pt": "is not a PyTorch checkpoint",
              "pickle.pt": "opt in with --config.allow_pickle=true",
              "empty.pt": "holds no tensors",
              "missing.pt": "no checkpoint file"}
  for name, text in expected.items():
    with pytest.raises(ConfigError) as err:
      files.read_state_dict(str(tmp_path / name),
                            opt_in="--config.allow_pickle=true")
    assert text in str(err.value) and "\n" not in str(err.value), name
  sd = files.read_state_dict(str(tmp_path / "pickle.pt"), allow_pickle=True)
  assert list(sd) == ["a"]


def test_safetensors_round_trip(tmp_path, rb):
  pytest.importorskip("safetensors", reason="safetensors is optional")
  model, arch, _, _ = _build(rb, "wrn16_2", 10)
  variables, spec = convert.from_torch(model.state_dict(), arch=arch)
  path = str(tmp_path / "w.safetensors")
  files.write_state_dict(convert.to_torch(variables, spec), path)
  back, _ = convert.from_torch(files.read_state_dict(path), arch=arch)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, variables))


# --- the RobustBench table ---------------------------------------------------


def test_every_table_entry_builds_with_its_options():
  """Each entry's options name a network robustjax builds (abstractly)."""
  for e in robustbench.ENTRIES:
    arch = archs.ARCHS[e.arch]
    opts = e.from_torch_options()
    spec = models.model_spec(
        arch.model, 1.0, opts.pop("num_classes", 10),
        mean=opts.pop("mean", arch.mean), std=opts.pop("std", arch.std),
        **arch.fixed, **{k: opts.get(k, v) for k, v in arch.free.items()})
    assert models.build_model(spec) is not None, e.name


def _zoo_facts(path: str) -> dict[tuple[str, str], dict | None]:
  """What RobustBench's model zoo file says of each entry, read from its
  source (importing it would need timm): ``{(threat, name): facts}`` with
  facts the architecture and options robustjax would use, or None for a
  class robustjax does not compute."""
  src = pathlib.Path(path).read_text()
  tree = ast.parse(src)
  classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
  text = lambda node: ast.get_source_segment(src, node)  # noqa: E731

  def call_facts(func: str, args: dict) -> dict | None:
    if func == "WideResNet":
      return dict(arch="wide_resnet", depth=args.get("depth", 28),
                  widen=args.get("widen_factor", 10),
                  num_classes=args.get("num_classes", 10),
                  sub_block1=bool(args.get("sub_block1", False)))
    if func in ("DMWideResNet", "DMPreActResNet"):
      act = {"Swish": "swish", "nn.SiLU": "silu"}[args["activation_fn"]]
      facts = dict(num_classes=args["num_classes"], activation=act,
                   dm_stats=args["mean"])
      if func == "DMPreActResNet":
        return dict(facts, arch="dm_preact_resnet18") if args[
            "depth"] == 18 else None
      return dict(facts, arch="dm_wide_resnet", depth=args["depth"],
                  widen=args["width"])
    if func in ("ResNet18", "ResNet") and args.get(
        "block", "BasicBlock") == "BasicBlock" and args.get(
            "num_blocks", [2, 2, 2, 2]) == [2, 2, 2, 2]:
      return dict(arch="resnet18", num_classes=args.get("num_classes", 10))
    if func == "PreActResNet" and args["num_blocks"] == [2, 2, 2, 2]:
      v2 = args["block"] == "PreActBlockV2" or args.get("out_shortcut")
      if bool(v2) != bool(args.get("bn_before_fc", False)):
        return None
      return dict(arch="preact_resnet18_v2" if v2 else "preact_resnet18",
                  num_classes=args.get("num_classes", 10))
    return None

  def value(node, scope: dict):
    if isinstance(node, ast.Name) and node.id in scope:
      return scope[node.id]
    try:
      return ast.literal_eval(node)
    except ValueError:
      return text(node)

  def positional(func: str) -> list[str]:
    return {"WideResNet": ["depth", "num_classes", "widen_factor"],
            "ResNet": ["block", "num_blocks"],
            "PreActResNet": ["block", "num_blocks"]}.get(func, [])

  def args_of(call: ast.Call, scope: dict) -> dict:
    func = text(call.func).split(".")[-1]
    out = {k: value(a, scope) for k, a in zip(positional(func), call.args)}
    out.update({k.arg: value(k.value, scope) for k in call.keywords})
    return out

  def class_facts(name: str) -> dict | None:
    if name == "ResNet18":
      return call_facts("ResNet18", {})
    node = classes.get(name)
    if node is None:
      return None
    init = next(f for f in node.body if isinstance(f, ast.FunctionDef)
                and f.name == "__init__")
    params = [a.arg for a in init.args.args[1:]]
    defaults = [ast.literal_eval(d) for d in init.args.defaults]
    scope = dict(zip(params[len(params) - len(defaults):], defaults))
    sup = next(c for c in ast.walk(init) if isinstance(c, ast.Call)
               and text(c.func).endswith("__init__"))
    base = text(node.bases[0])
    facts = call_facts(base, dict(zip(positional(base), [
        value(a, scope) for a in sup.args]), **{
            k.arg: value(k.value, scope) for k in sup.keywords}))
    if facts is None:
      return None
    forward = text(next(f for f in node.body if isinstance(f, ast.FunctionDef)
                        and f.name == "forward"))
    buffers = {}
    for c in ast.walk(init):
      if isinstance(c, ast.Call) and text(c.func) == "self.register_buffer":
        tensor = next(t for t in ast.walk(c.args[1])
                      if isinstance(t, ast.Call) and text(t.func) ==
                      "torch.tensor")
        # The zoo writes these as list literals or ``[0.5] * 3``: plain
        # arithmetic on literals from the pinned package's source.
        buffers[c.args[0].value] = tuple(eval(text(tensor.args[0])))
    if buffers:
      return dict(facts, mean=buffers["mu"], std=buffers["sigma"],
                  buffers=True)
    if "2. * x - 1." in forward:
      return dict(facts, mean=(0.5,) * 3, std=(0.5,) * 3, buffers=False)
    return None if "std(" in forward else facts

  out = {}
  for node in tree.body:
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            and text(node.value.func) == "OrderedDict"):
      continue
    threat = {"linf": "Linf", "l2": "L2",
              "common_corruptions": "corruptions"}.get(node.targets[0].id)
    if threat is None or not isinstance(node.value.args[0], ast.List):
      continue
    for item in node.value.args[0].elts:
      name, entry = item.elts[0].value, item.elts[1]
      model = dict(zip([k.value for k in entry.keys], entry.values))["model"]
      if isinstance(model, ast.Lambda) and isinstance(model.body, ast.Call):
        func = text(model.body.func).split(".")[-1]
        facts = call_facts(func, args_of(model.body, {
            "CIFAR10_MEAN": "C10", "CIFAR100_MEAN": "C100"}))
      elif isinstance(model, ast.Name):
        facts = class_facts(model.id)
      else:
        facts = None
      out[(threat, name)] = facts
  return out


def test_table_agrees_with_the_robustbench_zoo_source():
  """Every zoo entry robustjax computes is in the table, with the class's
  architecture, depth, widen, activation, class count, sub_block1 and
  normalisation; nothing else is."""
  spec = importlib.util.find_spec("robustbench")
  if spec is None:
    pytest.skip("robustbench==1.1.1 is a test dependency")
  zoo = os.path.join(spec.submodule_search_locations[0], "model_zoo")
  table = {(e.dataset, e.threat, e.name): e for e in robustbench.ENTRIES}
  seen = set()
  for dataset in robustbench.DATASETS:
    for (threat, name), facts in _zoo_facts(
        os.path.join(zoo, f"{dataset}.py")).items():
      key = (dataset, threat, name)
      if facts is None:
        assert key not in table, key
        continue
      seen.add(key)
      e = table[key]
      assert e.arch == facts["arch"], key
      for option in ("depth", "widen", "activation"):
        assert e.options.get(option) == facts.get(option), (key, option)
      assert e.options.get("num_classes", 10) == facts["num_classes"], key
      assert e.sub_block1 == facts.get("sub_block1", False), key
      if "dm_stats" in facts:  # DeepMind: constructor mean/std
        want = robustbench.C100DM if facts["dm_stats"] == "C100" else None
        assert (e.mean, e.std) == (want or (None, None)), key
      elif "mean" in facts:
        np.testing.assert_allclose(e.mean, facts["mean"], err_msg=str(key))
        np.testing.assert_allclose(e.std, facts["std"], err_msg=str(key))
        assert e.buffers == facts["buffers"], key
      else:
        assert e.mean is None and not e.buffers, key
  assert seen == set(table)
  assert robustbench.counts()[("cifar10", "Linf")] == 58


def test_table_lookup_and_unknown_names():
  e = robustbench.entry("Wang2023Better_WRN-70-16")
  assert (e.arch, e.options["depth"], e.options["activation"]) == (
      "dm_wide_resnet", 70, "silu")
  assert robustbench.entry("Rice2020Overfitting", threat="L2").arch == \
      "preact_resnet18_v2"
  with pytest.raises(ConfigError, match="closest: Gowal2020Uncovering_70_16"):
    robustbench.entry("Gowal2020Uncovering_70_61")
  with pytest.raises(ConfigError, match="unsupported RobustBench model"):
    robustbench.entry("Ding2020MMA")
  with pytest.raises(ConfigError, match="but in cifar100/Linf"):
    robustbench.entry("Cui2020Learnable_34_10_LBGAT6")


def test_docs_hold_the_generated_table():
  doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / \
      "interop.md"
  assert robustbench.markdown_table() in doc.read_text(), (
      "docs/interop.md is out of date: paste the output of "
      "`python -m robustjax.interop.robustbench` into it")


# --- full size ---------------------------------------------------------------


def _param_count(model) -> int:
  return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrn28_10", "dm_wrn70_16"])
def test_full_size_models(rb, case):
  """WRN-28-10 (TRADES) and DeepMind's WRN-70-16: parameter counts equal
  RobustBench's (36.48M, 266.80M) and the converted logits agree."""
  torch.manual_seed(0)
  if case == "wrn28_10":
    model = rb["wide_resnet"].WideResNet(depth=28, widen_factor=10)
    arch, options, count = "wide_resnet", {}, 36_479_194
  else:
    model = rb["dm_wide_resnet"].DMWideResNet(
        depth=70, width=16, activation_fn=rb["dm_wide_resnet"].Swish)
    arch, options, count = "dm_wide_resnet", dict(activation="swish"), \
        266_796_506
  randomise(model, seed=1)
  assert _param_count(model) == count
  variables, spec = convert.from_torch(model.state_dict(), arch=arch,
                                       **options)
  ours = sum(int(np.size(v)) for v in jax.tree.leaves(variables["params"]))
  assert ours == count
  x, y = _data(10, n=2)
  t_logits, t_grad = _torch_outputs(model, x, y)
  j_logits, j_grad = _jax_outputs(spec, variables, x, y)
  print(f"\n{case}: logits rel {_rel(j_logits, t_logits):.2e}, input "
        f"gradient rel {_rel(j_grad, t_grad):.2e}")
  assert _rel(j_logits, t_logits) <= LOGIT_RTOL
  assert _rel(j_grad, t_grad) <= GRAD_RTOL
