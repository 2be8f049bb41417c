# Two commands set up everything: `make serve` and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-unit test-integration test-browser test-reliability test-lm-eval serve generate clean-venv bench bench-peer bench-quality bench-serve bench-grammar bench-scoring bench-speculate test-ray

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on this machine's disk, never a newer CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)  ## all tests: unit (tiny random model) + integration (default model)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not reliability and not ray"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

# The server's slow reliability checks: hypothesis and schemathesis fuzzing, a disconnect
# storm and many open connections (pytest marker `reliability`; `make test` leaves them out).
test-reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability

# lm-eval-harness (the `eval` extra, installed on first use) scoring an offline
# multiple-choice task through `tokenflow serve`, checked against transformers (marker `lm_eval`).
test-lm-eval: $(STAMP)
	$(PY) -c "import lm_eval, tenacity" 2>/dev/null || \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[dev,eval]'
	$(PY) -m pytest -q -m lm_eval

# `tokenflow sweep --ray` and Ray Serve replicas on a real local Ray cluster (pytest marker
# `ray`; `make test` leaves them out). Installs the `ray` extra (ray[serve], pinned) the first time.
test-ray: $(STAMP)
	$(PY) -c "import ray.serve" 2>/dev/null || \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[dev,ray]'
	$(PY) -m pytest -q -m ray

# The web page in headless Chromium. Chromium comes from apt and playwright (pinned in
# pyproject's `browser` extra) from PyPI; never `playwright install`, which downloads
# its own browser build (offline here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)  ## browser tests of the web page (installs chromium + playwright first)
	# An install that fails is reported, not fatal: the tests then skip with the reason.
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; } || \
	  echo "test-browser: could not install chromium; the browser tests will skip"
	$(PY) -c "import playwright" 2>/dev/null || \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[dev,browser]' || \
	  echo "test-browser: could not install playwright; the browser tests will skip"
	$(PY) -m pytest -q -m browser

serve: $(STAMP)  ## serve the default model on 127.0.0.1:8000
	$(VENV)/bin/tokenflow serve

# Per-strategy latency, ours vs transformers generate(), in one run: JSON, CSV, markdown
# table and PNG plots in benchmarks/results/. Extra flags: make bench BENCH_ARGS="--tokens 32".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/strategies.py $(BENCH_ARGS)

# llama-cpp-python is only a benchmark peer, never a runtime dependency; it compiles
# llama.cpp from source (several minutes, once per venv).
LLAMA_CPP_PIN := llama-cpp-python==0.3.36

# TIER=avx2|avx512|portable: our kernels forced to that tier against llama.cpp's own server
# built for the same ISA from the same sdist's source (benchmarks/llamacpp.py, cached).
TIER ?=
bench-peer: $(STAMP)  ## ours vs llama.cpp (same GGUF) vs transformers generate(), one run; TIER=avx2 per tier
ifeq ($(TIER),)
	$(PY) -c "import llama_cpp" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check '$(LLAMA_CPP_PIN)'
	$(PY) benchmarks/peer_llamacpp.py
else
	$(PY) benchmarks/peer_llamacpp.py --tier $(TIER) --out benchmarks/results/peer_llamacpp_$(TIER).json
endif

bench-quality: $(STAMP)  ## greedy agreement and perplexity of each weight format vs float32
	$(PY) benchmarks/quality.py

LEVELS ?= 1,2,4,8,16,32,64
# PEER=llama-server: then the same load against llama-server (-np = the largest level) in the same run.
PEER ?=
bench-serve: $(STAMP)  ## serving load over HTTP on the default model: benchmarks/results/serve_load.{json,csv,png}
	$(PY) benchmarks/serve_load.py --levels $(LEVELS) $(if $(PEER),--peer $(PEER) --out serve_load_vs_$(PEER))

bench-grammar: $(STAMP)  ## what constrained output costs: benchmarks/results/grammar_cost.json
	$(PY) benchmarks/grammar_cost.py

bench-scoring: $(STAMP)  ## scoring throughput (prompt logprobs), ours vs transformers: benchmarks/results/scoring.json
	$(PY) benchmarks/scoring.py

bench-speculate: $(STAMP)  ## prompt-lookup speculation: greedy tok/s with vs without, agreement: benchmarks/results/speculate.json
	$(PY) benchmarks/speculate.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
