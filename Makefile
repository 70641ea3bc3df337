# The two quickstart commands are `make demo` and `make test`; both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install lint lock-check infra-check test test-nightly unit integration e2e demo bench sandbox devhost cli clean chromium \
	start start-clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)

# Browser tests drive Debian's chromium (environment.md); install it once if missing (CI runs as root).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

install: $(STAMP) $(NODE_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The dependency locks are current: requirements(-dev).txt pin every package of requirements(-dev).in at the same
# version, every transitive dependency, each with hashes (offline; recompiling is in the README, "Dependencies").
lock-check: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_requirements_lock.py

# Bicep: every file parses (pycep) and checkov passes with 0 failures and 0 parsing errors (own venv: .venv-infra).
infra-check:
	$(PYTHON) tools/infra_check.py

test: lint lock-check infra-check $(NODE_STAMP) chromium
	$(BIN)/pytest

# Nightly-sized proof: 12,000 generated hostile inputs over every HTTP function (new cases every night) and the
# webhook fault test at 10,000 deliveries (about 15 minutes on 2 cores). `make test` runs the smaller defaults.
test-nightly: $(STAMP) $(NODE_STAMP)
	HYPOTHESIS_PROFILE=nightly FAULT_WEBHOOK_DELIVERIES=10000 $(BIN)/pytest tests/unit/test_hostile_input.py \
		tests/integration/test_webhook_faults.py

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP) $(NODE_STAMP) chromium
	$(BIN)/pytest tests/e2e

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m demo

bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/run_all.py

sandbox: $(STAMP)
	$(BIN)/python -m sandbox

devhost: $(STAMP)
	$(BIN)/python -m devhost

# The development loop (README, "Local development"): Azurite, the sandbox with its seeded tenants and orgs, and
# the function app with its HTTP, queue and timer functions, until Ctrl-C; state kept under .sandbox/.
# START_ARGS passes options, e.g. START_ARGS="--port 7072" (python -m devhost.start --help lists them).
START_ARGS ?=
start: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m devhost.start $(START_ARGS)

# The same, forgetting the saved sandbox, storage and keys first.
start-clean: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m devhost.start --fresh $(START_ARGS)

clean:
	rm -rf $(VENV) .venv-infra node_modules .sandbox .pytest_cache .mypy_cache .ruff_cache
