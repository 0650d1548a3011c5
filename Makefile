# Two commands on a fresh machine: `make demo` (train the bundled scene) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and on its own, so that a CPU machine gets a CPU build.
# GPU users: `make setup TORCH_SPEC=torch` (or install torch into .venv beforehand).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-gpu demo lint lint-imports clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q -m "not gpu" tests

test-gpu: setup
	$(PY) -m pytest -q -m gpu tests

demo: setup
	$(VENV)/bin/neus2 train

lint: setup lint-imports
	$(VENV)/bin/ruff check neus2cli tests data_tools bench
	$(VENV)/bin/ruff format --check neus2cli tests data_tools bench

# The layering contracts in pyproject.toml ([tool.importlinter]).
lint-imports: setup
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
