"""Shared fixtures of the op tests."""

from __future__ import annotations

import pytest

from slimrt import _native

NATIVE = _native.available()
ISAS = (["reference"] + list(_native.load().available_isas())) if NATIVE else ["reference"]


@pytest.fixture(params=ISAS)
def isa(request):  # test_int8_gemm.py has its own, without "reference"
    """Runs the test on the reference or with the native kernel forced onto one ISA, then restores."""
    if request.param == "reference":
        yield "reference"
        return
    ext = _native.load()
    before = ext.active_isa()
    ext.set_isa(request.param)
    yield request.param
    ext.set_isa(before)
