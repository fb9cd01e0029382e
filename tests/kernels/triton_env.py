"""Shared switches for the Triton tests (imported by the test modules next to it).

The interpreter tests need TRITON_INTERPRET=1 and SLIMRT_BACKEND=triton in the environment before
triton and slimrt are imported, which the main pytest process (default backend, native CPU kernels)
does not have: test_triton_suite.py runs them in one subprocess with that environment. Run them
directly with `SLIMRT_BACKEND=triton TRITON_INTERPRET=1 python -m pytest tests/kernels`.
"""

import os

import pytest

UNDER_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("SLIMRT_BACKEND") == "triton"

interpreter_only = pytest.mark.skipif(
    not UNDER_INTERPRETER,
    reason="runs in the subprocess of tests/kernels/test_triton_suite.py (SLIMRT_BACKEND=triton TRITON_INTERPRET=1)",
)

# Small odd sizes: the interpreter executes each program in numpy, so a few tiles per shape.
ODD = (1, 7, 17, 33, 67)
