# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench

.PHONY: run test lint bench bench-quick soak check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# the engine and the test tools
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the peers the benchmarks compare against (jinja2, APScheduler 3, DBOS)
$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH)

run: $(STAMP)
	$(BIN)/cronstack run examples

check: $(STAMP)
	$(BIN)/cronstack check examples

test: $(STAMP)
	$(BIN)/ruff check engine compiler runtime tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engine compiler runtime tests benchmarks

bench: $(BENCH)
	$(BIN)/python -m benchmarks

bench-quick: $(BENCH)
	$(BIN)/python -m benchmarks --quick

soak: $(STAMP)
	CRONSTACK_SOAK=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
