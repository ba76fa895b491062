# Two entry points for people and CI: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-extended lint typecheck audit unit browser bench bench-fleet bench-fleet-large clean

$(STAMP): pyproject.toml requirements.txt $(wildcard package.json package-lock.json)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "keyhealth needs Python 3.11 or newer: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e '.[dev]'
	@# Azurite (npm), the local Table Storage the state store tests run against.
	if [ -f package.json ]; then npm ci --no-audit --no-fund; fi
	@touch $(STAMP)

# The whole job on the built-in fleet: the local Azure stand-in, `check` over HTTPS, then the timeline.
demo: $(STAMP)
	$(BIN)/keyhealth demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Known vulnerabilities in the installed dependencies (pip-audit); says "skipped" and why where PyPI's
# vulnerability service cannot be reached, and fails on a real finding.
audit: $(STAMP)
	$(BIN)/python tools/audit_dependencies.py

unit: $(STAMP) browser
	$(BIN)/pytest

# Debian's Chromium for the HTML report's browser test (skipped, saying why, only where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report's browser test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
	  || echo "could not install chromium: the browser test will be skipped"; }

test: lint typecheck audit unit

# The suite with the big fuzz counts (10,000+ generated events per schema and more; see RELIABILITY.md).
test-extended: $(STAMP) browser
	KEYHEALTH_EXTENDED=1 $(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/predict_bench.py

bench-fleet: $(STAMP)
	$(BIN)/python -m bench.fleet_bench

bench-fleet-large: $(STAMP)
	$(BIN)/python -m bench.fleet_bench --large

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
