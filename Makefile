# Conveyor — developer commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
LOCK    = requirements/lock.txt
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install lock demo test check lint typecheck layers docs unit contract acceptance bench bench-smoke reliability test-latest test-oldest clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)  ## Create .venv and install Conveyor with every extra and the locked dev tools

lock:  ## Re-resolve the toolchain to the newest allowed versions; rewrites requirements/lock.txt
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock
	@echo "requirements/lock.txt rewritten: review 'git diff', then run 'make test'"

test-latest:  ## The suite on the newest versions every range allows (finds drift before users do)
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade -e '.[test]'
	.venv-latest/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-oldest:  ## The suite on the lowest runtime versions pyproject.toml allows
	rm -rf .venv-oldest && $(PYTHON) -m venv .venv-oldest
	grep -v -E '^(click|rich|croniter|psycopg|psycopg-binary|psycopg-pool|redis)==' $(LOCK) > .venv-oldest/tools.txt
	.venv-oldest/bin/python -m pip install --quiet -c requirements/oldest.txt -c .venv-oldest/tools.txt -e '.[test]'
	.venv-oldest/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

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

docs: $(STAMP)  ## Build the documentation site (mkdocs-material) into build/site; warnings are errors
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: $(STAMP) check docs  ## Static checks, the docs build, then the whole test suite
	@test -x /usr/bin/chromium || bash .ci/install-chromium
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
	rm -rf $(VENV) .venv-lock .venv-latest .venv-oldest .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
