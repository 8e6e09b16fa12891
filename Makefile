# One task runner. `make demo` and `make test` are the README's two fresh-machine commands.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-headless test test-slow lint typecheck clean

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

test: $(STAMP)
	$(BIN)/ruff check tui_backfill tests
	$(BIN)/mypy
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check tui_backfill tests
	$(BIN)/ruff format --check tui_backfill tests

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) state/*.sqlite3* state/demo
