"""The layering of robustjax, checked by parsing every module (no import).

Libraries (``attacks``, ``models``, ``data``, ``weightspace``, ``rws``,
``rift``, ``smoothing``, ``training``, ``evaluation``, ``interop``) never import the task
layer (``robustjax.tasks``), ``configs`` or ``launch``; the config-free ones
never import ``ml_collections``; ``weightspace`` works on pytrees without
models or the trainer; ``attacks`` know nothing of training; ``models``
nothing of data, attacks, training or interop; ``data`` nothing of models or
training; ``interop`` (PyTorch conversion) nothing of data, attacks or
training. No
module uses a private name (``_x``) of another package, and the import
graph (module-level and function-level imports alike) has no cycle.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "robustjax"

LIBRARIES = ("attacks", "models", "data", "weightspace", "rws", "rift",
             "smoothing", "training", "evaluation", "interop")
CONFIG_FREE = ("attacks", "models", "data", "weightspace", "rws", "rift",
               "smoothing", "interop")
FORBIDDEN = {
    "weightspace": ("models", "training"),
    "attacks": ("training",),
    "models": ("data", "attacks", "training", "interop"),
    "data": ("models", "training"),
    "interop": ("data", "attacks", "training"),
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
  return MODULES[name].name == "__init__.py"


def _package_of(name: str) -> str:
  """The package a module belongs to (itself for a package)."""
  return name if _is_package(name) else name.rsplit(".", 1)[0]


def _area(name: str) -> str:
  """``robustjax.rws.signatures`` -> ``rws``; ``robustjax.evaluation`` ->
  ``evaluation``; ``robustjax`` -> ``""``."""
  parts = name.split(".")
  return parts[1] if len(parts) > 1 else ""


def _resolve(module: str, level: int, here: str) -> str:
  if level:
    base = _package_of(here).split(".")
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))
  return module


def _imports(name: str):
  """``(target module, imported names, line)`` for every import in module
  ``name``; a ``from pkg import sub`` whose ``sub`` is a module counts as
  an import of that module."""
  tree = ast.parse(MODULES[name].read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, (), node.lineno
    elif isinstance(node, ast.ImportFrom):
      target = _resolve(node.module or "", node.level, name)
      for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in MODULES:
          yield sub, (), node.lineno
        else:
          yield target, (alias.name,), node.lineno


def _edges() -> dict[str, set[str]]:
  graph = {}
  for name in MODULES:
    graph[name] = {target for target, _, _ in _imports(name)
                   if target in MODULES and target != name}
  return graph


def test_the_parser_sees_the_package():
  assert "robustjax.attacks.registry" in MODULES
  assert "robustjax.tasks.common" in MODULES
  assert "robustjax.rift" in MODULES
  assert _area("robustjax.rws.signatures") == "rws"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layering(name):
  area = _area(name)
  problems = []
  for target, names, line in _imports(name):
    top = target.split(".")[0]
    where = f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
    if area in LIBRARIES and (target.startswith("robustjax.tasks")
                              or top in ("configs", "launch")):
      problems.append(f"{where}: a library imports the task layer/configs")
    if area in CONFIG_FREE and top == "ml_collections":
      problems.append(f"{where}: a library reads ml_collections configs")
    if top == "robustjax" and _area(target) in FORBIDDEN.get(area, ()):
      problems.append(f"{where}: {area} must not depend on "
                      f"{_area(target)}")
    private = [n for n in names if n.startswith("_")]
    if private and target in MODULES and _package_of(target) != \
        _package_of(name):
      problems.append(f"{where}: private {', '.join(private)} of another "
                      "package")
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_attribute_of_another_package(name):
  """``module._x`` on a module imported from another package."""
  tree = ast.parse(MODULES[name].read_text())
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      target = _resolve(node.module or "", node.level, name)
      for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in MODULES:
          aliases[alias.asname or alias.name] = sub
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in MODULES and alias.asname:
          aliases[alias.asname] = alias.name
  bad = []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and _package_of(aliases[node.value.id]) != _package_of(name)):
      bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
  assert not bad, f"{name} uses private names of another package: {bad}"


def test_no_import_cycle():
  graph = _edges()
  state: dict[str, int] = {}
  stack: list[str] = []
  cycles = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "import cycles:\n" + "\n".join(
      " -> ".join(c) for c in cycles)


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
  """The checks are not vacuous: a planted bad module fails them."""
  bad = PACKAGE / "weightspace" / "_planted_for_test.py"
  monkeypatch.setitem(MODULES, "robustjax.weightspace._planted_for_test",
                      bad)
  source = ("from robustjax.training import loop\n"
            "from robustjax.tasks import common\n"
            "from robustjax.rws.signatures import _private\n"
            "import ml_collections\n")
  original = pathlib.Path.read_text

  def read_text(self, *args, **kwargs):
    return source if self == bad else original(self, *args, **kwargs)
  monkeypatch.setattr(pathlib.Path, "read_text", read_text)
  with pytest.raises(AssertionError) as err:
    test_layering("robustjax.weightspace._planted_for_test")
  for expected in ("must not depend on training", "task layer",
                   "ml_collections", "private _private"):
    assert expected in str(err.value)


TASK_FUNCTION_LINES = 80


@pytest.mark.parametrize("name", sorted(n for n in MODULES
                                        if n.startswith("robustjax.tasks")))
def test_task_functions_stay_short(name):
  """The task layer only translates configs and calls libraries: no
  function in it runs past about 80 lines."""
  tree = ast.parse(MODULES[name].read_text())
  long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
          for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > TASK_FUNCTION_LINES]
  assert not long, f"{name}: {', '.join(long)}"
