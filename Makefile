# Everything a fresh machine needs: Python 3.11+ with pip and venv. The targets
# below create .venv and install the project into it before doing anything else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit integration lint typecheck bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "$(PYTHON) has no venv module: installing Debian's python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## start the embedded broker and Postgres and run the worker on them
	$(BIN)/usage-ingest dev

test: $(STAMP)  ## the whole suite: lint, format, import contracts, types, every test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest

unit: $(STAMP)  ## no network, no processes: the code's unit tests and the repository's files
	$(BIN)/pytest tests/unit tests/repo

integration: $(STAMP)
	$(BIN)/pytest tests/integration

chaos: $(STAMP)  ## crash, outage, rebalance and hostile-input scenarios; prints the figure table
	$(BIN)/pytest tests/chaos

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Not part of `make test`: a full run takes about 5 minutes (README, "Performance").
# Options pass through, e.g. make bench BENCH_ARGS="--quick" or BENCH_ARGS="--events 50000".
BENCH_ARGS ?=

bench: $(STAMP)  ## the performance benchmark: writes bench-results.json
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
