# rungflow: `make demo` tunes the example ConvNet; `make test` runs the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test test-fast bench lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tuning.examples.digits

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15 tests --doctest-modules tuning

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/algorithms.py

lint: $(STAMP)
	$(BIN)/ruff check tuning tasks flows
	$(BIN)/mypy tuning tasks flows

clean:
	rm -rf $(VENV) runs .pytest_cache
