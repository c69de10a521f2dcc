# gristmill: `make demo` installs everything and summarises the sample transcripts;
# `make test` installs everything and runs the whole test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: screenshots setup demo test test-fast lint bench clean

setup: $(STAMP)

# pip's output goes to a log (this machine's index config makes it chatty); shown on failure.
$(STAMP): pyproject.toml
	@echo "Installing gristmill into $(VENV) (first time: about 2 minutes) ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -e '.[dev]' > $(VENV)/install.log 2>&1 \
		|| (tail -n 30 $(VENV)/install.log; exit 1)
	@$(BIN)/python -m tasks.model_files data/models/all-MiniLM-L6-v2 > /dev/null
	@touch $(STAMP)

demo: setup
	$(BIN)/gristmill summarize

# Test files run side by side, one pytest-xdist worker per core, each file on one worker (so a
# file's fixtures start once). At most 4: each worker starts its own session servers (Prefect's
# harness, PostgreSQL, Chroma, a browser) and peaked at ~2 GB here.
PARALLEL := -n auto --maxprocesses 4 --dist loadfile

test: setup
	$(BIN)/python -m pytest -q $(PARALLEL) --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# Refresh the README's screenshots (tests write theirs to a temp dir, never to tracked files).
screenshots: setup
	GRISTMILL_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q tests/e2e/test_prefect_server.py \
		-k "runs_page or failed_run_page"

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf data/summaries data/chroma data/batch data/quarantine data/results
