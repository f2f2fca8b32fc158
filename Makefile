# The two commands a newcomer runs on a fresh machine:
#   make demo   - set up .venv and run the offline demo (the whole flow on the built-in toy model, CPU, minutes)
#   make test   - set up .venv (with dev tools) and run ruff and the whole test suite (unit + end-to-end CLI)
#   make compat-venv - a second venv with an older, common stack (diffusers 0.35, peft 0.17, transformers 4):
#                 tests/integration/test_lora_compat.py loads our LoRA files there (about 80 s to build; make test
#                 builds it)
#   make newest-venv - a third venv with the NEWEST releases of torch, diffusers, transformers, peft and
#                 accelerate from PyPI (the stack a user who installs today gets); make test runs the fast tests
#                 there too. From PyPI alone (PIP_CONFIG_FILE=/dev/null): the machine's pip config caps torch at
#                 the releases on its disk, and a user's GPU stack is newer. Rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
COMPAT := .venv-compat
COMPAT_STACK := diffusers==0.35.2 peft==0.17.1 transformers==4.57.6 accelerate==1.15.0
NEWEST := .venv-newest
NEWEST_STACK := torch diffusers transformers peft accelerate

.PHONY: demo test test-fast test-newest lint bench gpu-check clean compat-venv newest-venv

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

$(COMPAT)/.installed:
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q torch==2.13.0
	$(COMPAT)/bin/pip install -q $(COMPAT_STACK)
	touch $@

compat-venv: $(COMPAT)/.installed

$(NEWEST)/.installed: pyproject.toml
	rm -rf $(NEWEST)
	$(PYTHON) -m venv $(NEWEST)
	PIP_CONFIG_FILE=/dev/null $(NEWEST)/bin/python -m pip install -q --upgrade pip
	PIP_CONFIG_FILE=/dev/null $(NEWEST)/bin/pip install -q --upgrade $(NEWEST_STACK)
	PIP_CONFIG_FILE=/dev/null $(NEWEST)/bin/pip install -q -e ".[dev]"
	$(NEWEST)/bin/pip list --format=freeze | grep -iE '^(torch|diffusers|transformers|peft|accelerate)=' \
		| tee $(NEWEST)/stack.txt
	touch $@

newest-venv: $(NEWEST)/.installed

# The fast tests on the newest releases (sdtune installs and works beside the stack users have today).
test-newest: newest-venv
	$(NEWEST)/bin/pytest -q -n 2 --dist loadfile -m "not slow"

# Two workers (pytest-xdist), one test file each at a time: the real-shape models (up to ~16 GB of RAM) stay in
# one file, so they never run beside each other.
test: lint compat-venv newest-venv
	$(BIN)/pytest -q -n 2 --dist loadfile
	$(NEWEST)/bin/pytest -q -n 2 --dist loadfile -m "not slow"

test-fast: $(VENV)/.installed
	$(BIN)/pytest -q -m "not slow"

# Side by side with the diffusers DreamBooth-LoRA script (fetched, in its own venv with torchvision; see the
# docstring of benchmarks/train_bench.py): make bench ARGS="--peer-script PATH --peer-python PATH"
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/train_bench.py $(ARGS)

# Every ready config on the real SD architectures (random weights, no download) on a CUDA GPU: steps/s, peak
# memory, fits 16 GB, exact resume. Options: make gpu-check ARGS="--configs lora --steps 20" (docs/gpu-check.md)
gpu-check: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) $(COMPAT) $(NEWEST) .pytest_cache .ruff_cache
