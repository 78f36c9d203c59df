# Two commands are all a user needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow bench lint

setup:
	@VENV=$(VENV) bash .ci/setup-venv

demo: setup
	$(PY) -m evaluators check kernels/seeds/tiled_matmul.py --task runs/demo_cpu.toml

test: setup
	$(PY) -m ruff check evaluators evolve kernels tests benchmarks
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m pytest -q benchmarks --benchmark-enable --benchmark-only -p no:cacheprovider

lint: setup
	$(PY) -m ruff check evaluators evolve kernels tests benchmarks
	$(PY) -m ruff format --check evaluators evolve kernels tests benchmarks
