# One command each: `make quickstart` (set up + run the main job), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One JAX CPU device per core, the batch split across them (benchmarks/README.md):
# the largest power of two <= nproc, at most 8, so batches of 128/512 divide evenly.
# getconf works on Linux and macOS (which has no nproc).
CPU_DEVICES ?= $(shell n=$$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1); d=1; while [ $$((d * 2)) -le $$n ] && [ $$d -lt 8 ]; do d=$$((d * 2)); done; echo $$d)

# Packages installed without their declared dependencies (requirements-nodeps.txt).
# torchattacks's wheel also carries an older copy of robustbench's files, so
# robustbench is reinstalled last, on its own, for its own files to win
# (tests/test_interop.py reads its model zoo source).
define install_nodeps
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps --force-reinstall $$(grep '^robustbench==' requirements-nodeps.txt)
endef

.PHONY: setup setup-dev setup-tfds setup-bench quickstart test test-slow bench clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || \
	  { echo "error: robustjax needs Python 3.11 to 3.13 and $(PY) is another; run make PY=python3.12 (or 3.11, 3.13)" >&2; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=61"

setup: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .

# The optional TFDS data sources (dataset.source=tfds): TensorFlow and TFDS.
setup-tfds: setup
	$(BIN)/pip install -q -r requirements-tfds.txt

setup-dev: setup
	$(BIN)/pip install -q -r requirements-dev.txt
	$(install_nodeps)

setup-bench: setup
	$(BIN)/pip install -q -r requirements-bench.txt
	$(install_nodeps)

quickstart: setup
	$(BIN)/python launch.py --config=configs/quickstart.py --workdir=workdirs/quickstart --cpu_devices=$(CPU_DEVICES)

# The tests run with glibc's huge pages for XLA:CPU's large buffers, as
# launch.py restarts itself with (robustjax/host_memory.py); the user's own
# GLIBC_TUNABLES are kept, and systems without glibc ignore the variable.
WITH_HUGE_PAGES := GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1

test: setup-dev
	$(WITH_HUGE_PAGES) $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-slow: setup-dev
	$(WITH_HUGE_PAGES) $(BIN)/python -m pytest -q -n 2 --dist loadgroup -m slow

bench: setup-bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf workdirs data/cache

# Curated mutation testing of the maths-bearing modules (tools/mutation.py;
# README "Mutation testing"): per-module score, survivors, run time.
.PHONY: mutation
mutation: setup-dev
	$(BIN)/python tools/mutation.py
