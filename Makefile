# Vaktrom task runner. `make help` lists the targets; the README's quick start is `make up` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

STATE  ?= $(or $(VAKTROM_STATE_DIR),.local)
VENV   := $(STATE)/venv
PY     := $(VENV)/bin/python
STACK  := infra/stack
PYTEST_ARGS ?=

.PHONY: i18n help bootstrap up bench-pipeline crash-matrix fuzz soak demo-check stack-up down status logs backup wal-status restore test test-plain test-unit check fmt schemas bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

bootstrap: ## install what is missing: Debian packages, Kafka jars, the virtualenv
	@infra/bootstrap

up: bootstrap ## set up and run the whole pipeline locally with a demo cohort (Ctrl-C stops the stages)
	@$(STACK) up
	@$(PY) infra/pipeline.py

bench-pipeline: stack-up ## only the whole-pipeline ladder and floors (bench/pipeline.py --help for one scenario)
	@$(PY) bench/pipeline.py $(BENCH_ARGS)

crash-matrix: stack-up ## every crash and outage scenario under load; table in bench/results/crash_matrix.md (~20 min)
	@$(PY) -m tests.crash_matrix --scenarios all --seconds 30

fuzz: stack-up ## 1,000,000 payloads through the bridge's core, then 300 hostile bursts through the real pipeline (~15 min)
	@$(PY) bench/fuzz_bridge.py
	@VAKTROM_HOSTILE_EXAMPLES=300 $(PY) -m pytest tests/integration/test_hostile_input.py -q

soak: stack-up ## the whole pipeline for 30 minutes at a steady rate after 10 of warm-up; memory and latency drift in bench/results/soak.md
	@$(PY) bench/soak.py

demo-check: ## beside a running `make up`: log in as the demo user, wait for a red and a yellow alert, keep screenshots
	@$(PY) infra/demo_check.py

stack-up: bootstrap ## start only Mosquitto, Kafka and PostgreSQL
	@$(STACK) up

down: ## stop everything `make up` started
	@if [ -x $(PY) ]; then $(STACK) down; else echo "nothing to stop: no virtualenv yet"; fi
	@if [ -x $(PY) ] && [ -f $(STATE)/run/postgres-plain.pid ]; then VAKTROM_STACK_POSTGRES_FLAVOUR=plain $(STACK) down postgres; fi
	@if [ -x $(PY) ] && [ -f $(STATE)/run/kafka-single-1.pid ]; then VAKTROM_STACK_KAFKA_NODES=1 $(STACK) down kafka; fi

backup: ## a backup set: base backup of the database, broker identities, credentials, identity key
	@$(PY) infra/backup.py base

wal-status: ## the WAL archive and the backup sets (docs/backup-restore.md)
	@$(PY) infra/backup.py wal-status

restore: ## the newest set's database into $(STATE) after it was lost; then `infra/backup.py rewind` (docs/backup-restore.md)
	@$(PY) infra/backup.py restore --to $(STATE) --only database --start

status: ## each service with its port, pid, memory and health
	@$(STACK) status

logs: ## the last lines of each service's log
	@$(STACK) logs

# The suite runs on one Kafka node; then the tests marked `cluster` (the crash matrix with its broker
# losses, the stack's own tests) on the three-node cluster `make up` runs (docs/contributing.md).
# A cluster left by `make up` or by the last `make test` is stopped first: the single node uses
# node 1's ports, and infra/stack refuses to start one layout while the other runs.
test: check ## set up, check, start the real services and run the whole test suite
	@VAKTROM_STACK_KAFKA_NODES=3 $(STACK) down kafka
	@VAKTROM_STACK_KAFKA_NODES=1 $(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)
	@echo "==> the cluster tests: one Kafka node stopped, three started"
	@VAKTROM_STACK_KAFKA_NODES=1 $(STACK) down kafka
	@VAKTROM_STACK_KAFKA_NODES=3 $(PY) -m pytest -m cluster $(PYTEST_ARGS)

# The database-facing tests, for the plain-PostgreSQL path (docs/archive.md, "Storage modes").
PLAIN_TESTS ?= tests/integration/test_archive_storage.py tests/integration/test_archive.py \
	tests/integration/test_archive_exactly_once.py \
	tests/integration/test_archive_read.py tests/integration/test_quarantine.py \
	tests/integration/test_registry_store.py tests/integration/test_alert_store.py \
	tests/integration/test_console_api.py tests/integration/test_stack.py

test-plain: bootstrap ## the database-facing tests on plain PostgreSQL (a second cluster, no TimescaleDB)
	@VAKTROM_STACK_POSTGRES_FLAVOUR=plain $(PY) -m pytest $(PLAIN_TESTS) $(PYTEST_ARGS)

test-unit: bootstrap ## only the tests that need no services
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

check: bootstrap ## format check, lint, types, schema files up to date
	@echo "==> checks: ruff format, ruff, mypy, contract schemas"
	@$(VENV)/bin/ruff format --check --quiet .
	@$(VENV)/bin/ruff check --quiet .
	@$(VENV)/bin/mypy
	@$(PY) -m contracts check

fmt: bootstrap ## format the code and apply safe lint fixes
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

schemas: bootstrap ## regenerate contracts/schemas/*.json from the contract types
	@$(PY) infra/schemas.py

i18n: bootstrap ## extract the console's strings into the nb/en catalogues and list what bokmål still lacks
	@$(PY) -m alerts.i18n_extract

bench: stack-up ## run the benchmarks against the local stack; figures go to bench/results/
	@$(PY) bench/pipeline.py
	@$(PY) bench/sim_publish.py
	@$(PY) bench/bridge_throughput.py
	@$(PY) bench/archive_throughput.py
	@$(PY) bench/archive_read.py
	@$(PY) bench/archive_storage.py
	@$(PY) bench/monitor_throughput.py
	@$(PY) bench/alerts_latency.py
	@$(PY) bench/registry_provision.py

clean: down ## stop the stack and delete all local state (.local/: data, logs, venv, jars)
	rm -rf $(STATE)
