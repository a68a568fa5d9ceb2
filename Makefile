# fedsim developer entry points.  Every target sets up .venv first (idempotent).
#   make demo   - set up and run the default experiment (FedAvg, embedded digits)
#   make test   - set up and run lint, type checks and the default test suite
#   make slow   - the heavy tests (real-data results, deployment), not run by CI
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedsim-setup

.PHONY: setup demo test check slow clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch (or one pulled in by flwr) downloads CUDA wheels
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,datasets]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/fedsim run overwrite=true

check: setup
	$(VENV)/bin/ruff check fedsim strategies clients protocols tests bench scripts
	$(VENV)/bin/ruff format --check fedsim strategies clients protocols
	$(VENV)/bin/mypy fedsim strategies clients protocols
	$(VENV)/bin/lint-imports

test: check
	FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
	  $(VENV)/bin/pytest -q --durations=15

slow: setup
	FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
	  $(VENV)/bin/pytest -q -m slow

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache .mypy_cache .ruff_cache
