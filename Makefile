# Conveyor — developer commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install demo test check lint typecheck layers unit contract acceptance bench bench-smoke reliability clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)  ## Create .venv and install Conveyor with every extra and dev tool

demo: $(STAMP)  ## Run a real demo workload on the SQLite default
	$(BIN)/python examples/demo.py

check: lint typecheck layers  ## Static checks

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP) check  ## Static checks, then the whole test suite (unit, contract, acceptance)
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

contract: $(STAMP)
	$(BIN)/pytest -n 2 tests/contract $(PYTEST_ARGS)

acceptance: $(STAMP)
	$(BIN)/pytest tests/acceptance $(PYTEST_ARGS)

reliability: $(STAMP)  ## The fault suite in its long form (minutes; rewrites RELIABILITY.md)
	CONVEYOR_RELIABILITY=long $(BIN)/pytest tests/reliability -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: $(STAMP)  ## Full benchmark against the peer libraries (writes bench/results/, BENCHMARKS.md)
	bash bench/run.sh

bench-smoke: $(STAMP)  ## Seconds-long run of every benchmark workload (also part of `make test`)
	bash bench/run.sh --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
