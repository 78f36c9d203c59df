# Two commands are all a user needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow bench lint test-compat gpu-check calibrate

setup:
	@VENV=$(VENV) bash .ci/setup-venv

# Each demo run gets its own name, so `make demo` can be repeated; runs/demo-*/ hold the stores.
demo: setup
	$(VENV)/bin/evolve run runs/demo.toml --name demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(PY) -m ruff check evaluators evolve kernels tests benchmarks conftest.py
	$(PY) -m pytest -q --durations=15

test-slow: setup
	$(PY) -m pytest -q -m slow tests --durations=10

# Every benchmark, saved as pytest-benchmark JSON (machine info, commit) under benchmarks/results/<machine>/
# and compared with the last run saved there (a first run only warns that there is none). BENCH picks
# files or tests: `make bench BENCH=benchmarks/test_store_bench.py`.
BENCH ?= benchmarks
bench: setup
	$(PY) -m pytest -q $(BENCH) -m "slow or not slow" -s --benchmark-enable --benchmark-only -p no:cacheprovider \
		--benchmark-storage=benchmarks/results --benchmark-autosave --benchmark-compare

lint: setup
	$(PY) -m ruff check evaluators evolve kernels tests benchmarks conftest.py
	$(PY) -m ruff format --check evaluators evolve kernels tests benchmarks conftest.py

# The evaluator on the GPU image's torch 2.11 + triton 3.6 (CPU), in a second venv (.venv-compat):
# unit tests, the shared judge cases, and the CPU judge refused with numpy >= 2.4. See .ci/test-compat.
test-compat:
	bash .ci/test-compat

# On a machine with a CUDA GPU, as it is (the GPU image: system python3 with its torch and triton,
# no venv, no ray): gpu tests, the seed judged on runs/llm_bf16.toml, the same kernels modelled, a
# model-vs-measured table and tutorial 03's autotune configs, < 4 min. Rerun: GPU_CHECK_ARGS=--quick.
gpu-check:
	PYTHONPATH=. python3 -m evaluators.gpu_check $(GPU_CHECK_ARGS)

# Fit the offline model's constants to evaluators/model/figures.toml (and benchmarks/results/*/calibration.json
# when gpu-check wrote any): writes evaluators/model/fitted.json and fit.md. Compile facts are cached in
# .cache/model-fit (first run ~1 min on 2 cores, then seconds).
calibrate: setup
	$(PY) -m evaluators.model.fit $(CALIBRATE_ARGS)
