# Two commands set up everything: `make serve` and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-unit test-integration serve generate clean-venv bench-serve

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

serve: $(STAMP)  ## serve the default model on 127.0.0.1:8000
	$(VENV)/bin/tokenflow serve

LEVELS ?= 1,2,4,8,16,32,64
bench-serve: $(STAMP)  ## serving load over HTTP on the default model: benchmarks/results/serve_load.{json,csv,png}
	$(PY) benchmarks/serve_load.py --levels $(LEVELS)

clean-venv:
	rm -rf $(VENV)
