# The two commands of the README: `make demo` and `make test`. Both create/refresh .venv.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv services clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/toolwatch demo

# Test-time services (Prometheus, Alertmanager from Debian's packages) are installed when missing.
services:
	@bash .ci/services.sh

test: $(STAMP) services
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache

# OpenLLMetry's MCP instrumentation (0.62) patches only mcp<2: its integration test runs a client
# in this separate environment. Cached by the stamp; `make test` builds it once.
OLLM_VENV := .venv-openllmetry
$(OLLM_VENV)/.installed:
	$(PYTHON) -m venv $(OLLM_VENV)
	$(OLLM_VENV)/bin/python -m pip install --quiet 'mcp<2' 'opentelemetry-instrumentation-mcp>=0.62,<0.63' opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
	@touch $@

.PHONY: openllmetry-venv
openllmetry-venv: $(OLLM_VENV)/.installed
test: $(OLLM_VENV)/.installed
