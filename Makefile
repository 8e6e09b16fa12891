# One task runner. `make demo` and `make test` are the README's two fresh-machine commands.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-headless demo-hash demo-publish test test-slow chaos lint typecheck clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tui-backfill demo

demo-headless: $(STAMP)
	$(BIN)/tui-backfill demo --no-ui

# The content-hash index on embedded servers: 3,000 objects, an index with gaps (state/demo-hash).
demo-hash: $(STAMP)
	$(BIN)/tui-backfill demo hash-index

# The media publishing worker on embedded servers: a SQLite queue of 300 files (state/demo-publish).
demo-publish: $(STAMP)
	$(BIN)/tui-backfill demo publish

# Two test processes (pytest-xdist): most tests wait on their servers and subprocesses, so two
# halve the suite's wall time on CI's 2 cores (about 7 minutes instead of 11). syrupy skips its
# unused-snapshot check under xdist: tests/test_snapshot_files.py keeps that gate.
test: $(STAMP)
	$(BIN)/ruff check tui_backfill tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# 10,002 items through fault-injecting proxies, 20 SIGKILLs and 3 SIGTERMs (a few minutes);
# prints its figures. CHAOS_SEED=N picks other moments and faults.
chaos: $(STAMP)
	$(BIN)/pytest -q -s -m chaos tests/test_chaos.py

lint: $(STAMP)
	$(BIN)/ruff check tui_backfill tests
	$(BIN)/ruff format --check tui_backfill tests

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) state/*.sqlite3* state/*.log state/demo state/demo-hash state/demo-publish
