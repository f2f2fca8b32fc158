# The two commands a newcomer runs on a fresh machine:
#   make demo   - set up .venv and run the offline demo (the whole flow on the built-in toy model, CPU, minutes)
#   make test   - set up .venv (with dev tools) and run ruff and the whole test suite (unit + end-to-end CLI)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/sdtune demo

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/pytest -q -m "not slow"

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/train_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
