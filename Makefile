# The README's two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install reference-deps demo test test-unit test-integration test-chains bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# The native CPU kernels are compiled here (once per source / CPU / compiler; cached), so no run
# or timed step pays the first build (about 40 s on 2 cores).
install: $(VENV)/.installed
	$(PY) -m jax_asc.native

# PyTorch references for the parity tests (tests/test_passt.py; torchmetrics' SNR for report
# 004's metrics; transformers' WhisperFeatureExtractor and Qwen2AudioEncoder for report 004's
# semantic teacher, tests/test_qwen_audio.py) and the benchmark's PyTorch column; `make test`
# runs without them (those tests skip). PyPI has no CPU torchaudio for torch
# 2.13.0: its 2.11.0 wheel is installed without dependencies and its compiled (CUDA-linked)
# libraries removed, which torchaudio supports (pure-Python mode); hear21passt's frontend uses
# only torchaudio's Python code (kaldi.get_mel_banks, the masking transforms), as does the
# BEATs fbank reference (kaldi.fbank). openbeats is an independent PyTorch BEATs encoder
# (tests/test_beats.py), installed without its dependencies (it needs only torch, torchaudio).
# It needs the environment only, not the kernels: `make -j2 install reference-deps` builds the
# kernels beside these installs (.ci/run).
reference-deps: $(VENV)/.installed
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet torchmetrics==1.9.0 transformers==5.24.0
	$(PY) -m pip install --quiet --no-deps torchaudio==2.11.0 hear21passt==0.0.26 openbeats==0.1.1
	rm -f $$($(PY) -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torchaudio').origin))")/lib/*.so

# glibc malloc with transparent huge pages for the heap (jax_asc/native/allocator.py): fewer TLB
# misses over the large activations on CPU. Kept if already set.
HUGE_PAGES := GLIBC_TUNABLES=$${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}

# Trains and evaluates the embedded default (synthetic scenes) end to end, a few minutes on a CPU.
demo: install
	$(HUGE_PAGES) $(PY) -m jax_asc.main --config configs/quickstart.py --workdir workdirs/quickstart

test: install
	$(PY) -m pytest -q --durations=30 tests

# The suite's parts alone (markers set in tests/conftest.py).
test-unit test-integration test-chains: test-%: install
	$(PY) -m pytest -q tests -m $*

bench: install
	$(HUGE_PAGES) $(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) workdirs .pytest_cache
