# Every target does its own set-up: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BROKERS := $(PYTHON) scripts/brokers.py
# The official AsyncAPI parser (npm, pinned by its lockfile) that tests check
# `hexbus asyncapi` documents with; install scripts are not run (none is needed).
ASYNCAPI_TOOLS := tools/asyncapi
NODE_STAMP := $(ASYNCAPI_TOOLS)/node_modules/.installed

.PHONY: install demo test lint unit integration bench brokers brokers-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(NODE_STAMP): $(ASYNCAPI_TOOLS)/package.json $(ASYNCAPI_TOOLS)/package-lock.json
	cd $(ASYNCAPI_TOOLS) && npm ci --no-audit --no-fund --ignore-scripts
	touch $(NODE_STAMP)

## The sample service on the in-memory default (no broker, no set-up).
demo: $(STAMP)
	$(BIN)/hexbus demo

## Quality gates, then every test (brokers are provisioned and stopped again).
test: lint $(NODE_STAMP)
	$(BROKERS) run -- $(BIN)/python -m pytest tests -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/mypy --strict src examples
	$(BIN)/lint-imports

unit: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

integration: $(STAMP)
	$(BROKERS) run -- $(BIN)/python -m pytest tests/integration -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/hexbus bench --adapter memory

brokers:
	$(BROKERS) up

brokers-down:
	$(BROKERS) down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis $(ASYNCAPI_TOOLS)/node_modules
