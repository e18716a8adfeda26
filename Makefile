# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Without a GPU, take a CPU build of torch first so the dependency resolver does not pull
	# the multi-GB CUDA wheels (PyPI's Linux torch): the +cpu wheel where pip's find-links
	# hold one, else PyTorch's CPU index.
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q "torch==2.13.0+cpu" || \
	  $(BIN)/python -m pip install -q "torch>=2.3" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	# setuptools tells every editable install of a package mapped from a folder of another
	# name (envs/ -> metarl.envs) that same-named folders may shadow imports; that notice is
	# about the layout, not a problem, so it is filtered. Anything else still prints.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e ".[dev,ray,highway,video]"
	touch $(STAMP)

demo: setup
	$(BIN)/metarl train

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check metarl envs tests scripts

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
