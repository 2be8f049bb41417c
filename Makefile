# Two commands set up everything: `make serve` and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-unit test-integration serve generate clean-venv bench-peer bench-quality

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

# llama-cpp-python is only a benchmark peer, never a runtime dependency; it compiles
# llama.cpp from source (several minutes, once per venv).
LLAMA_CPP_PIN := llama-cpp-python==0.3.36

bench-peer: $(STAMP)  ## ours vs llama.cpp (same GGUF) vs transformers generate(), one run
	$(PY) -c "import llama_cpp" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check '$(LLAMA_CPP_PIN)'
	$(PY) benchmarks/peer_llamacpp.py

bench-quality: $(STAMP)  ## greedy agreement and perplexity of each weight format vs float32
	$(PY) benchmarks/quality.py

clean-venv:
	rm -rf $(VENV)
