# The few commands people run. `make bench` and `make test` set everything up on first use.
#
#   make bench          the benchmark on its built-in default workload (quick on CPU, full on GPU)
#   make test           the whole test suite (CPU; Triton kernels under the interpreter)
#   make lint           ruff check + ruff format --check + clang-format over csrc/ (CI runs it before the tests)
#   make test-gpu       the same suite on a CUDA GPU
#   make compile-check  compile every GPU kernel for sm_80/sm_90 without a GPU
#   make gpu-check-dry  dry-run bench/gpu_check.sh (the lent-GPU check) on this CPU: plumbing and time budget
#   make build          rebuild the extension after editing csrc/
#   make env            versions, GPU, build and backends
#   make test-peers     the parity tests against colbert-ai and PyLate, in their own venv (make peers)
#   make peers-engines  fast-plaid and xtr-warp-rs (torch 2.11) in .venv-engines, for colbert-fast bench --workload E1,E2

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
CUDA_HOME ?= /usr/local/cuda
# Build the CUDA kernels whenever nvcc is there (no GPU needed); CPU kernels are always built.
ifneq ($(wildcard $(CUDA_HOME)/bin/nvcc),)
  export CUDA_HOME
  export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
endif
export MAX_JOBS ?= 2

STAMP := $(VENV)/.colbert_fast-installed
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: setup build test test-gpu test-peers bench compile-check gpu-check-dry env peers peers-engines lint clean

setup: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja numpy
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench,pipeline,cranfield]"
	touch $@

build: setup
	$(PY) setup.py build_ext --inplace

test: setup
	$(PY) -m pytest tests -q

LINT_PATHS := colbert_fast tests bench setup.py
# Every C++ and CUDA source; the style is .clang-format's.
CSRC_FILES := $(shell find csrc -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

lint: setup
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC_FILES)

test-gpu: setup
	$(PY) -m pytest tests -q --device cuda

bench: setup
	$(VENV)/bin/colbert-fast bench

compile-check: setup
	$(PY) -m colbert_fast.kernels.compile_check -j 2
	$(PY) -m pytest tests/backends/test_cuda_build.py -q

gpu-check-dry: setup
	$(PY) -m pytest tests/benchmark/test_gpu_check.py -q

env: setup
	$(VENV)/bin/colbert-fast env

# colbert-ai and PyLate, only for the parity tests (pytest -m peers). They pin transformers <= 5.3
# and sentence-transformers 5.3, so they get a venv of their own: the product's tests keep running
# against the newest releases setup.py allows. That venv imports colbert_fast from this checkout
# (a .pth file), with the extension `make setup` built, and the product venv's torch: torch and
# what it requires (triton, the CUDA libraries: 5+ GB) are linked in, not installed a second time
# (two copies filled CI's disk), by tests/peers_share_torch.py. Their full
# dependency lists would replace torch, so they go in without dependencies and the few modules
# their scoring and encoding paths import are named here. voyager is PyLate's Voyager index (the
# oracle of tests/compat/test_pylate_index.py); PyLate 1.6.0 hands it lists, which voyager >= 2.2
# refuses (add_items wants one ndarray), hence 2.1.0.
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_STAMP := $(PEERS_VENV)/.peers-installed
PEERS := colbert-ai==0.2.22 pylate==1.6.0
PEER_DEPS := tqdm ujson==5.12.0 huggingface_hub GitPython scipy datasets "transformers>=4.41,<=5.3.0" ninja sentence-transformers==5.3.0 voyager==2.1.0

peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP) Makefile
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(PEERS_VENV)/peer-constraints.txt
	$(PEERS_PY) -m pip install -q --upgrade pip setuptools wheel
	$(PEERS_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > $(PEERS_VENV)/purelib.txt
	echo "$(CURDIR)" > "$$(cat $(PEERS_VENV)/purelib.txt)/colbert_fast_checkout.pth"
	$(PY) tests/peers_share_torch.py $(PEERS_VENV)/product-torch > "$$(cat $(PEERS_VENV)/purelib.txt)/colbert_fast_product_torch.pth"
	$(PEERS_PY) -m pip install -q -c $(PEERS_VENV)/peer-constraints.txt torch numpy safetensors pytest hypothesis
	$(PEERS_PY) -c "import os, sys, torch; own = os.path.join(os.path.realpath(sys.prefix), ''); sys.exit('the peers venv installed a second torch' if os.path.realpath(torch.__file__).startswith(own) else 0)"
	$(PEERS_PY) -m pip install -q -c $(PEERS_VENV)/peer-constraints.txt --no-deps $(PEERS)
	$(PEERS_PY) -m pip install -q -c $(PEERS_VENV)/peer-constraints.txt $(PEER_DEPS)
	touch $@

test-peers: peers
	COLBERT_FAST_REQUIRE_PEERS=1 $(PEERS_PY) -m pytest tests -q -m peers

# The end-to-end engines the E1/E2 benchmark compares with (colbert_fast/benchmark/engines.py):
# fast-plaid (PLAID, the index behind PyLate) and xtr-warp-rs (WARP). Both pin torch 2.11, so they
# live in a venv of their own and the benchmark drives them in a subprocess over embeddings it
# exported to safetensors: the two torch versions never meet. Not part of `make test` or CI.
ENGINES_VENV ?= .venv-engines
ENGINES_PY := $(ENGINES_VENV)/bin/python
ENGINES_STAMP := $(ENGINES_VENV)/.engines-installed
ENGINES := fast-plaid==1.7.0.2110 xtr-warp-rs==2.1.0.2110

peers-engines: $(ENGINES_STAMP)

$(ENGINES_STAMP): Makefile
	test -x $(ENGINES_PY) || $(PYTHON) -m venv $(ENGINES_VENV)
	$(ENGINES_PY) -m pip install -q --upgrade pip
	$(ENGINES_PY) -m pip install -q torch==2.11.0 numpy safetensors
	$(ENGINES_PY) -m pip install -q $(ENGINES) "torch==2.11.0"
	touch $@

clean:
	rm -rf build *.egg-info colbert_fast/_C*.so $(STAMP) $(PEERS_STAMP)
