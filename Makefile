# One command each: `make quickstart` (set up + run the main job), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One JAX CPU device per core: the batch is split across them (benchmarks/README.md).
CPU_DEVICES ?= $(shell nproc)

.PHONY: setup setup-dev setup-bench quickstart test test-slow bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=61"

setup: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .

setup-dev: setup
	$(BIN)/pip install -q -r requirements-dev.txt

setup-bench: setup
	$(BIN)/pip install -q -r requirements-bench.txt

quickstart: setup
	$(BIN)/python launch.py --config=configs/quickstart.py --workdir=workdirs/quickstart --cpu_devices=$(CPU_DEVICES)

test: setup-dev
	$(BIN)/python -m pytest -q -n 2

test-slow: setup-dev
	$(BIN)/python -m pytest -q -n 2 -m slow

bench: setup-bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf workdirs data/cache
