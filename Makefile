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
.PHONY: help venv up check generate format test test-deps tools test-unit test-service test-browser test-cluster test-container \
	test-chart test-kind test-realnode lock lock-upgrade chart-lint cluster-up cluster-down cluster-status image bench bench-gateway \
	bench-operator bench-startup lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("BHIV Core needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs exactly the locked versions, checked against their hashes, then the
# project itself without resolving anything. Reinstalled whenever the lock or
# pyproject.toml (the one place version ranges are written) changes.
$(VENV)/.installed: requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# uv resolves the locks; it is bootstrapped into the venv at this version.
UV_VERSION := 0.13.9
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock"

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'

# `make lock` keeps every pin that still fits pyproject.toml and resolves only
# what changed (a dependency added, removed or re-ranged); `make lock-upgrade`
# moves everything to the newest versions the ranges allow.
lock: $(BIN)/uv ## update requirements.lock and requirements-dev.lock after editing pyproject.toml
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --extra dev -o requirements-dev.lock

lock-upgrade: $(BIN)/uv ## re-resolve both locks to the newest versions pyproject.toml allows
	$(UV_COMPILE) --upgrade -o requirements.lock
	$(UV_COMPILE) --upgrade --extra dev -o requirements-dev.lock

venv: $(VENV)/.installed ## create .venv with the package and its test tools

up: venv ## run every service locally, in startup order (Ctrl-C stops them)
	$(BIN)/bhiv up

test-deps: venv ## install the system packages the tests use (PostgreSQL, Redis, nginx, wrk, hey, Chromium)
	hack/test-deps

# Builds the pinned Kubernetes tools from Go modules into ~/.cache/bhiv/tools
# (tens of minutes cold, seconds warm). If that fails, the cluster tiers skip
# and say why; the other tiers still run. As root on Linux, where a real node can
# run (tests/realnode, tests/e2e), its tools too: kubelet, kube-proxy, CoreDNS,
# crictl, Traefik and the pause binary.
NODE_TOOLS := $(shell [ "$$(uname -s)" = Linux ] && [ "$$(id -u)" = 0 ] && echo --with-node)
tools: ## build the pinned Kubernetes tools (kube-apiserver, kwok, helm, kubelet, ...) once
	-hack/k8s-tools $(NODE_TOOLS)

# Every Python tree the gates cover.
PY_TREES := src tests bench charts hack/generate

check: venv ## the quality gates: ruff lint + format, mypy, helm lint --strict (make test runs them first)
	$(BIN)/ruff check $(PY_TREES)
	$(BIN)/ruff format --check $(PY_TREES)
	$(BIN)/mypy
	$(BIN)/python hack/generate --check
	@helm="$$(hack/k8s-tools --print-bin-dir)/helm"; \
	if [ -x "$$helm" ]; then "$$helm" lint --strict charts/bhiv; \
	else echo "check: helm is not built (make tools); the chart tier lints the chart too"; fi

generate: venv ## rewrite what is made from src/bhiv/catalog.py and the chart's `# --` comments
	$(BIN)/python hack/generate

format: venv ## apply ruff's safe fixes and its formatting to every Python tree
	$(BIN)/ruff check --fix $(PY_TREES)
	$(BIN)/ruff format $(PY_TREES)

# Every tier runs under coverage.py; the servers the tests start as subprocesses
# are measured too ([tool.coverage.run] patch = subprocess). The report is printed
# whether or not a test failed, and fails the build below
# [tool.coverage.report] fail_under.
COVERAGE := COVERAGE_FILE=$(CURDIR)/.coverage-data/coverage $(BIN)/coverage
test: test-deps tools check ## run the gates, then every test tier under coverage (installs and builds what is missing first)
	rm -rf .coverage-data
	$(COVERAGE) run -m pytest $(PYTEST_ARGS); tests=$$?; \
	$(COVERAGE) combine --quiet && $(COVERAGE) report; covered=$$?; \
	[ $$tests -eq 0 ] && [ $$covered -eq 0 ]

test-unit: venv ## unit tier only (no I/O)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-service: test-deps ## services over real HTTP on SQLite and PostgreSQL
	$(BIN)/python -m pytest -m "service or postgres" $(PYTEST_ARGS)

test-browser: test-deps ## the web console in headless Chromium against real servers (screenshots in tests/browser/artifacts)
	$(BIN)/python -m pytest -m browser $(PYTEST_ARGS)

test-cluster: venv tools ## the cluster tier: a real API server with kwok nodes
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

test-container: venv ## the container tier: build the image, run every service from it
	$(BIN)/python -m pytest -m container $(PYTEST_ARGS)

test-chart: venv tools ## the Helm chart: lint, kubeconform, install/upgrade/test/uninstall on the local cluster
	$(BIN)/python -m pytest tests/cluster/chart $(PYTEST_ARGS)

test-kind: venv ## the e2e suite on a kind cluster (needs Docker with privileged containers, kind, internet)
	BHIV_E2E_CLUSTER=kind $(BIN)/python -m pytest tests/e2e -v $(PYTEST_ARGS)

test-realnode: test-deps ## the real node here (containerd, kubelet, Traefik) and the e2e suite on it; root only
	-hack/k8s-tools --with-node
	$(BIN)/python -m pytest tests/realnode tests/e2e $(PYTEST_ARGS)

chart-lint: tools ## helm lint --strict
	"$$(hack/k8s-tools --print-bin-dir)/helm" lint --strict charts/bhiv

cluster-up: tools ## start the local cluster (control plane + kwok nodes); prints its kubeconfig
	hack/kwok-cluster up

cluster-down: ## stop the local cluster, leaving no process behind
	hack/kwok-cluster down

cluster-status: ## is the local cluster running, and where is its kubeconfig
	hack/kwok-cluster status

image: ## build the container image bhiv-core:dev on a cached local Debian base
	hack/build-image

bench: test-deps ## Logistics, gateway and start-up figures (printed, and as JSON under bench/results/; never pass/fail)
	$(BIN)/python bench/logistics_throughput.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/results.py

bench-logistics: test-deps ## Logistics throughput and latency only
	$(BIN)/python bench/logistics_throughput.py

bench-gateway: test-deps ## direct vs gateway vs nginx
	$(BIN)/python bench/gateway.py

bench-operator: venv tools ## N modules to Ready: operator vs direct apply
	$(BIN)/python bench/operator_scale.py

bench-startup: venv ## bhiv up to every service ready, import time and idle RSS per service
	$(BIN)/python bench/startup.py

lint: venv ## ruff check only (make check runs every gate)
	$(BIN)/ruff check $(PY_TREES)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .coverage-data
