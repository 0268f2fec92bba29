# One set of commands, used locally and by CI (.ci/run).
VENV ?= .venv
BIN = $(VENV)/bin
# The interpreter the venv is made from: the system's CPython when it is 3.11 or newer and can
# make a venv, else python3 on PATH. A distribution's build (Debian's /usr/bin/python3) is
# optimised with PGO and LTO and links libpython in; pyenv's default build does neither and runs
# the request path about 15 % slower (README "Which CPython"). PYTHON=... picks another.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo /usr/bin/python3 || echo python3)

.PHONY: install install-test run lint layers types test check fuzz soak bench profile image screenshots clean

# the package's version: the image tag deploy/kubernetes and docker-compose.yml name
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= apikey-gateway

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## the gateway and its runtime dependencies
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python  ## plus pytest, ruff, mypy
	$(BIN)/pip install -q -e '.[test]'

ECHO_LISTEN ?= 127.0.0.1:9000
CONFIG ?= config/gateway.yaml

# The gateway starts only once the demo upstream says it listens; if the upstream cannot start
# (its port is taken), its one-line error is the last word and make fails at once.
run: install  ## the demo: echo upstream on :9000 + gateway with config/gateway.yaml
	@ready=$$(mktemp); \
	$(BIN)/gateway echo-upstream --listen $(ECHO_LISTEN) >$$ready & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null; rm -f $$ready' EXIT INT TERM; \
	until grep -q listening $$ready; do \
	  kill -0 $$echo_pid 2>/dev/null || exit 1; sleep 0.1; \
	done; \
	echo "web console: $(BIN)/gateway console-link -c $(CONFIG) --workspace WS --email EMAIL" \
	  "prints a sign-in link (README \"Web console\")"; \
	$(BIN)/gateway serve -c $(CONFIG)

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

# Not in CI: SOAK_MINUTES of load at half the measured maximum on Postgres + Redis, sampled
# every minute; fails unless memory, descriptors, connections and p99 stay flat.
SOAK_MINUTES ?= 30
soak: install-test  ## the soak run (README "Security and reliability"), 30 min by default
	$(BIN)/python scripts/soak.py --minutes $(SOAK_MINUTES)

screenshots: install-test  ## retake the console's pictures in docs/console (README "Web console")
	GATEWAY_SCREENSHOTS=1 $(BIN)/python -m pytest tests/console/test_console_browser.py -k sqlite

bench: install  ## the performance benchmark (nginx + wrk, ratios in one run)
	$(BIN)/python scripts/bench.py

ROUTE ?= full
profile: install  ## py-spy flame graph of the request path under wrk: profile-out/$(ROUTE).svg
	$(BIN)/python scripts/profile.py --route $(ROUTE)

image:  ## the container image, tagged as the manifests name it (README "Deployment")
	docker build -f deploy/Dockerfile -t $(IMAGE):$(VERSION) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-out config/gateway.db*
