"""The curated mutants of tools/mutation.py still apply: every snippet
occurs exactly once in its file, changes it, and leaves code that compiles.
(Run the mutants themselves with ``make mutation``.)"""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load():
  spec = importlib.util.spec_from_file_location(
      "mutation", ROOT / "tools" / "mutation.py")
  module = importlib.util.module_from_spec(spec)
  # dataclasses look their module up in sys.modules while the class is made
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def test_every_mutant_applies_once_and_compiles():
  mutation = _load()
  assert mutation.check(mutation.MUTANTS) == []
  modules = {m.module for m in mutation.MUTANTS}
  assert modules == {"attacks", "objectives", "weightspace", "rws", "rift",
                     "data/corruptions"}


def test_check_reports_a_snippet_that_no_longer_applies():
  mutation = _load()
  stale = mutation.Mutant("stale", "attacks", "robustjax/attacks/apgd.py",
                          "this text is not in the file", "x", "apgd")
  assert mutation.check([stale]) == [
      "stale: original occurs 0 times in robustjax/attacks/apgd.py"]
