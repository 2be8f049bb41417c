# Two commands set up everything: `make serve` and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-quality test-unit test-integration test-browser test-reliability test-lm-eval serve generate clean-venv bench bench-peer bench-quality bench-serve bench-grammar bench-scoring test-ray gpu-bundle bench-prefix bench-speculate

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on this machine's disk, never a newer CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)  ## all tests: unit (tiny random model) + integration (default model); the 15 slowest named
	$(PY) -m pytest -q --durations=15

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not reliability and not ray"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

# The weight formats' perplexity and greedy agreement against float32 on the default model
# (pytest marker `quality`, about two minutes; `make test` leaves them out, CI runs them).
test-quality: $(STAMP)
	$(PY) -m pytest -q -m quality

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

bench-prefix: $(STAMP)  ## the prefix cache: chat TTFT per turn, compare's columns, a 200-prompt load: benchmarks/results/prefix_cache.json
	$(PY) benchmarks/prefix_cache.py

bench-speculate: $(STAMP)  ## prompt-lookup speculation: greedy tok/s with vs without, agreement: benchmarks/results/speculate.json
	$(PY) benchmarks/speculate.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)

# What benchmarks/gpu_check.sh needs on a lent GPU machine that has no network and its own
# PyTorch: SmolLM2-135M's config and tokenizer (the script builds a shape twin from them: the
# weights are over the 64 MiB that travel) and wheels of the server's packages that machine
# lacks (CPython 3.12). About 7 MB in gpu_bundle/ (git-ignored): carry it with the tree.
GPU_WHEELS := fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.54.0 httptools==0.9.0
gpu-bundle: $(STAMP)  ## gpu_bundle/: what the GPU check carries (model config + tokenizer, wheels)
	mkdir -p gpu_bundle/smollm2 gpu_bundle/wheels
	src=$$($(PY) -c "from generator.loading import resolve_model; print(resolve_model(None)[0])") && \
	  cp "$$src"/config.json "$$src"/tokenizer.json "$$src"/tokenizer_config.json \
	     "$$src"/chat_template.jinja "$$src"/generation_config.json gpu_bundle/smollm2/
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d gpu_bundle/wheels $(GPU_WHEELS)
	du -sh gpu_bundle
