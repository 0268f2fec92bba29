# One set of commands, used locally and by CI (.ci/run).
VENV ?= .venv
BIN = $(VENV)/bin
PYTHON ?= python3

.PHONY: install install-test run lint layers types test check fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## the gateway and its runtime dependencies
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python  ## plus pytest, ruff, mypy
	$(BIN)/pip install -q -e '.[test]'

run: install  ## the demo: echo upstream on :9000 + gateway with config/gateway.yaml
	$(BIN)/gateway echo-upstream --listen 127.0.0.1:9000 & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null' EXIT INT TERM; \
	$(BIN)/gateway serve -c config/gateway.yaml

lint:
	$(BIN)/ruff check gateway tests scripts

layers:  ## no import from a lower layer to a higher one (docs/ARCHITECTURE.md)
	$(BIN)/lint-imports

types:
	$(BIN)/mypy

test:
	$(BIN)/python -m pytest

check: install-test lint layers types test  ## everything CI runs

fuzz: install-test  ## the raw-socket fuzz at 50 000 inputs (CI runs 2 000)
	GATEWAY_FUZZ_EXAMPLES=50000 $(BIN)/python -m pytest tests/hostile/test_fuzz.py

bench: install  ## the performance benchmark (nginx + wrk, ratios in one run)
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-out gateway.db*
