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

bench: setup
	$(BIN)/python benchmarks/paper_exactness_speed.py
	$(BIN)/python benchmarks/cost_ratio.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
