# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

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

# The cost ratio twice: with glibc's defaults, and with freed memory kept (no page faults anew).
TUNED_MALLOC := MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=4294967295 MALLOC_TOP_PAD_=268435456

bench: setup
	$(BIN)/python benchmarks/paper_exactness_speed.py
	$(BIN)/python benchmarks/cost_ratio.py
	$(TUNED_MALLOC) $(BIN)/python benchmarks/cost_ratio.py --output benchmarks/results/cost_ratio_tuned_allocator.md
	$(BIN)/python benchmarks/normalized_sharpness_solver.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
