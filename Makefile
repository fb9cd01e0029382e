# Each target sets up .venv itself: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned: 2.13.0 is a CPU build that installs from local disk in seconds; a looser range
# pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
NATIVE_SRC := $(shell find csrc -name '*.cpp' -o -name '*.h') CMakeLists.txt pyproject.toml

.PHONY: setup demo test test-fast bench clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench,triton]"
	touch $@

# Editable install without build isolation: rebuilds incrementally in build/ when csrc/ changes.
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SRC)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

demo: setup
	$(PY) -m slimrt.cli demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m slimrt.cli bench all

clean:
	rm -rf build $(VENV) dist
