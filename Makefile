# The two commands: `make run` and `make test`. Both create .venv when it is missing and pass the
# environment through (DATABASE_URL, REDIS_URL, MQTT_URL, SMPP_URL ... work with either).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar on -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar on -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	GATEWAY_DEMO=$${GATEWAY_DEMO:-1} $(BIN)/gateway serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

# Every benchmark with its defaults (each prints its figures as ratios to a floor from the same run);
# `make bench BENCH=ledger` runs one. Benchmarks are not tests: `make test` never runs them.
BENCH ?= ledger ussd sms agents
bench: $(VENV)/.installed-test
	@for b in $(BENCH); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

unit: $(VENV)/.installed-test
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
