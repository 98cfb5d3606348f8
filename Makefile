# Everything a fresh machine needs: Python 3.11+ with pip and venv. The targets
# below create .venv and install the project into it before doing anything else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit integration lint typecheck bench chaos clean debian-packages

# Debian packages the tests drive: Chromium (the console's browser tests, through
# Playwright's Python package with no browser download) and promtool (the alert rules'
# unit tests). Installed once, when one of their commands is missing.
DEBIAN_PACKAGES := chromium chromium-driver prometheus

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "$(PYTHON) has no venv module: installing Debian's python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

debian-packages:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  && command -v promtool >/dev/null || { \
	  echo "installing Debian's $(DEBIAN_PACKAGES) for the browser and alert-rule tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); }

run: $(STAMP)  ## start the embedded broker and Postgres and run the worker on them
	$(BIN)/usage-ingest dev

test: $(STAMP) debian-packages  ## the whole suite: lint, format, import contracts, types, every test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest

unit: $(STAMP) debian-packages  ## no network, no processes: the code's unit tests and the repository's files
	$(BIN)/pytest tests/unit tests/repo

integration: $(STAMP) debian-packages
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
