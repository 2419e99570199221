# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-setup clean

setup: $(STAMP)

# torch is pinned and installed first: an open range would pull a CUDA build of several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/minsharp demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest src tests

# Optional peers for benchmarks/peers.py (BackPACK, ASDL, nngeometry, PyHessian, curvlinops)
# and matplotlib. BackPACK, curvlinops and nngeometry go in with --no-deps: they declare
# torchvision, which would replace the pinned CPU torch; their real dependencies are in the
# `bench` extra. A peer that is missing is reported as such by the benchmark, not an error.
PEERS_NO_DEPS := backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1 nngeometry==0.4

bench-setup: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/pip install --quiet --no-deps $(PEERS_NO_DEPS)

# Every benchmark script, then docs/benchmarks.md from their tables and plots. About 47
# minutes on 2 idle cores; each script waits up to BENCH_WAIT seconds for a quiet machine.
BENCH_WAIT ?= 60
BENCH := --wait-quiet $(BENCH_WAIT)

bench: bench-setup
	$(BIN)/python benchmarks/paper_exactness_speed.py $(BENCH)
	$(BIN)/python benchmarks/approximation.py $(BENCH)
	$(BIN)/python benchmarks/peers.py $(BENCH)
	$(BIN)/python benchmarks/scaling.py $(BENCH)
	$(BIN)/python benchmarks/cost_ratio.py $(BENCH)
	$(BIN)/python benchmarks/solvers.py $(BENCH)
	$(BIN)/python benchmarks/balance.py $(BENCH)
	$(BIN)/python benchmarks/measure_costs.py $(BENCH)
	$(BIN)/python benchmarks/engine_choices.py $(BENCH)
	$(BIN)/python benchmarks/normalized_sharpness_solver.py $(BENCH)
	$(BIN)/python benchmarks/tracking_overhead.py $(BENCH)
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
