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

.PHONY: install demo test test-cluster test-containers test-secure lint unit integration bench brokers brokers-down clean

$(STAMP): pyproject.toml hatch_build.py src/hexbus/application/_eager.c
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

## Quality gates, then every test (brokers and PostgreSQL are provisioned and stopped
## again: HEXBUS_TEST_POSTGRES_URL for the outbox/inbox tests); the
## secured brokers' tests are `make test-secure`, the 3-node ones `make test-cluster`.
test: lint $(NODE_STAMP)
	$(BROKERS) run -- $(BIN)/python -m pytest tests --ignore=tests/secure \
		--ignore=tests/cluster -q -p no:cacheprovider

## Failover on 3-node clusters (RabbitMQ quorum queues, Kafka replication factor 3):
## a 3-node set of its own (state in .cache/cluster, free ports beside any other
## brokers), started for the run and stopped after it; the tests stop and start nodes.
test-cluster: $(STAMP)
	$(BROKERS) --state-dir .cache/cluster run --nodes 3 -- \
		$(BIN)/python -m pytest tests/cluster -q -p no:cacheprovider

## TLS and SASL against a secured broker set of its own (RabbitMQ over TLS, Kafka over
## SASL_SSL with SCRAM, a throw-away CA): tests/secure/conftest.py starts it with
## `brokers.py --state-dir .cache/brokers-secure up --secure` and stops it again.
test-secure: $(STAMP)
	$(BIN)/python -m pytest tests/secure -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/mypy --strict src examples
	$(BIN)/lint-imports

## The contract, fault, smoke and database (outbox/inbox) tests against brokers and
## PostgreSQL in containers (testcontainers): starts a Docker engine where none answers
## (installing it as root on Debian), builds hexbus/rabbitmq, hexbus/kafka and
## hexbus/postgres from docker/, runs, and stops the engine it started.
CONTAINER_TESTS := tests/integration/test_*_contract.py tests/integration/test_faults.py \
	tests/integration/test_smoke_*.py tests/integration/test_databases.py \
	tests/integration/test_publish_timeouts.py $(wildcard tests/integration/test_outbox*.py)
test-containers: $(STAMP)
	env -u HEXBUS_RABBITMQ_URL -u HEXBUS_KAFKA_BOOTSTRAP_SERVERS -u HEXBUS_TEST_POSTGRES_URL \
		HEXBUS_TEST_BROKERS=containers TESTCONTAINERS_RYUK_DISABLED=true \
		$(PYTHON) scripts/containers.py run -- \
		$(BIN)/python -m pytest $(CONTAINER_TESTS) -q -p no:cacheprovider

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
