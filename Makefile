# The README's two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Trains and evaluates the embedded default (synthetic scenes) end to end, a few minutes on a CPU.
demo: install
	$(PY) -m jax_asc.main --config configs/quickstart.py --workdir workdirs/quickstart

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) workdirs .pytest_cache
