# BHIV Core developer commands. `make help` lists them.
#
# The two commands the README promises work on a fresh machine:
#   make up     run the whole platform locally (SQLite, no cluster)
#   make test   install what the tests need and run every tier

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv up test test-deps test-unit test-service test-cluster bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("BHIV Core needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalled whenever pyproject.toml (the one place versions are pinned) changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## create .venv with the package and its test tools

up: venv ## run every service locally, in startup order (Ctrl-C stops them)
	$(BIN)/bhiv up

test-deps: venv ## install the system packages the tests use (PostgreSQL server)
	hack/test-deps

test: test-deps ## run every test tier (installs what is missing first)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv ## unit tier only (no I/O)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-service: test-deps ## services over real HTTP on SQLite and PostgreSQL
	$(BIN)/python -m pytest -m "service or postgres" $(PYTEST_ARGS)

bench: test-deps ## benchmarks (print figures; never pass/fail on time)
	$(BIN)/python bench/logistics_throughput.py

lint: venv ## ruff
	$(BIN)/ruff check services tests bench

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
