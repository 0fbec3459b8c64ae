# Every target installs what it needs into .venv on first use, so each works on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-core test lint train demo

# the core package alone: what the main job (train) needs
$(VENV)/.installed-core: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e .
	touch $@

# every extra and the test tools: what the test suite needs (it covers the core too)
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@ $(VENV)/.installed-core $(VENV)/.installed-demo

install-core: $(VENV)/.installed-core

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check .

# passive OpenMP waiting: subprocess tests (DDP, CLI) share two cores without spinning threads
test: lint
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

# the main job: EfficientViM on scikit-learn's digits, >= 97% val top-1 in minutes on 2 CPU cores
# (the command itself makes OpenMP wait passively, so it stays fast when other processes share the cores)
train: install-core
	$(VENV)/bin/efficientvim train

# the core package and Gradio: what the demo page needs
$(VENV)/.installed-demo: pyproject.toml $(VENV)/.installed-core
	$(PY) -m pip install -e ".[demo]"
	touch $@

# a local web page for the newest runs/*/best.safetensors (after `make train`: the digits model)
demo: $(VENV)/.installed-demo
	$(VENV)/bin/efficientvim demo
