# Two commands set up everything: `make serve` and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-unit test-integration test-browser serve generate clean-venv bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on this machine's disk, never a newer CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)  ## all tests: unit (tiny random model) + integration (default model)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

# The web page in headless Chromium. Chromium comes from apt and playwright (pinned in
# pyproject's `browser` extra) from PyPI; never `playwright install`, which downloads
# its own browser build (offline here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)  ## browser tests of the web page (installs chromium + playwright first)
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	$(PY) -c "import playwright" 2>/dev/null || \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[dev,browser]'
	$(PY) -m pytest -q -m browser

serve: $(STAMP)  ## serve the default model on 127.0.0.1:8000
	$(VENV)/bin/tokenflow serve

# Per-strategy latency, ours vs transformers generate(), in one run: JSON, CSV, markdown
# table and PNG plots in benchmarks/results/. Extra flags: make bench BENCH_ARGS="--tokens 32".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/strategies.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
