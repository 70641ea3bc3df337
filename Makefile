# The two quickstart commands are `make demo` and `make test`; both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install lint test unit integration demo bench sandbox cli clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(NODE_STAMP)
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest tests/integration

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m demo

bench: $(STAMP)
	$(BIN)/python bench/auth_bench.py
	$(BIN)/python bench/dataverse_bench.py

sandbox: $(STAMP)
	$(BIN)/python -m sandbox

clean:
	rm -rf $(VENV) node_modules .sandbox .pytest_cache .mypy_cache .ruff_cache
