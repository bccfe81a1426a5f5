# Task interface (other tooling depends on these names). `make help` lists them.
PY := .venv/bin/python
PYTEST_ARGS ?=
# The services default to production (and refuse the built-in development secrets there); the
# local stack, the demo, the benchmark and the tests run them in development explicitly.
export ENVIRONMENT ?= development

.PHONY: help venv up down status test lint demo bench bench-quick stack-up stack-down services-up services-down schemas asyncapi test-faults

help:
	@echo "make up       start Kafka, PostgreSQL and the three services; returns when all are ready"
	@echo "make down     stop everything make up started"
	@echo "make status   one line per component"
	@echo "make test     set up and run the whole test suite (starts the stack if needed)"
	@echo "make test-faults  only the fault-injection suite (private Kafka and PostgreSQL, ~6 min)"
	@echo "make lint     ruff, mypy and import-linter (configured in pyproject.toml); CI runs it before the tests"
	@echo "make demo     run the multi-agency end-to-end flow on the real stack (budgeted policies) and print a report"
	@echo "make bench    end-to-end benchmark on the real stack (BENCH_ARGS='--persons 5000' for a quick run)"
	@echo "make bench-quick  the benchmark at 10,000 persons (a few minutes; for every change of the hot path)"
	@echo "make schemas  regenerate contract/schemas/*.json from the contract models"
	@echo "make asyncapi write docs/asyncapi.json from the code"

venv:
	@deploy/local/bootstrap.sh

stack-up: venv
	@deploy/local/stack.sh up

stack-down:
	@deploy/local/stack.sh down

services-up: stack-up
	@deploy/local/services.sh start

services-down:
	@deploy/local/services.sh stop

up: services-up

down:
	-@deploy/local/services.sh stop
	@deploy/local/stack.sh down

status:
	-@deploy/local/stack.sh status
	-@deploy/local/services.sh status

test: stack-up
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-faults: stack-up
	$(PY) -m pytest -q -m faults tests/faults $(PYTEST_ARGS)

# All three run, so that one run shows every finding; it fails when any of them does.
lint: venv
	@rc=0; \
	echo "--- ruff check"; $(PY) -m ruff check . || rc=1; \
	echo "--- mypy"; $(PY) -m mypy || rc=1; \
	echo "--- lint-imports"; $(dir $(PY))lint-imports || rc=1; \
	exit $$rc

# The demo's services decide with the budgeted policy set (budgets that run out mid-run), unless
# SUBSIDY_POLICY_DIR says otherwise; the variable reaches `up` (a prerequisite) and the demo.
demo: export SUBSIDY_POLICY_DIR ?= $(CURDIR)/tools/policies/budgeted
demo: up
	$(PY) -m tools.demo $(DEMO_ARGS)

bench: stack-up
	$(PY) -m tools.bench $(BENCH_ARGS)

bench-quick: stack-up
	$(PY) -m tools.bench --persons 10000 $(BENCH_ARGS)

schemas: venv
	$(PY) -m shared.contract.schemas write

asyncapi: venv
	$(PY) -m shared.contract.asyncapi docs/asyncapi.json
