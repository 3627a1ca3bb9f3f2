# Two commands: `make run` (install and start on the embedded SQLite default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test chaos fuzz lint format bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --editable .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/rassylka serve --host $(HOST) --port $(PORT)

# Two pytest processes (pytest-xdist): most tests wait on a server, a peer or a database, so
# two share this machine's cores well; TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	tests/peers/install.sh
	$(BIN)/pytest -n $(TEST_WORKERS)

# The fault suite (tests/chaos, docs/reliability.md): workers killed, the database restarted,
# peers in trouble; each test prints what it measured. ~3 min; PostgreSQL and Node needed.
chaos: $(VENV)/.installed-dev
	tests/peers/install.sh
	$(BIN)/pytest -m chaos tests/chaos
# Schemathesis against every operation with many examples each (see docs/testing.md); the
# ordinary `make test` runs the same tests with a few.
FUZZ_EXAMPLES ?= 500
fuzz: $(VENV)/.installed-dev
	RASSYLKA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/test_fuzz.py

# Every benchmark with its defaults (minutes; PostgreSQL and Postfix's tools needed).
bench: $(VENV)/.installed-dev
	tests/peers/install.sh
	$(BIN)/python bench/email_e2e.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/import_clients.py --total 1000000
	$(BIN)/python bench/stream_latency.py
	$(BIN)/python bench/smtp_transport.py
	$(BIN)/python bench/compose.py
	$(BIN)/python bench/dkim_sign.py
	$(BIN)/python bench/api_load.py
	$(BIN)/python bench/schedule_latency.py
	$(BIN)/python bench/sms_e2e.py
	$(BIN)/python bench/materialize.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
