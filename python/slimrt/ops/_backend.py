"""Which implementation serves each device: the kernel registrations made once, at import.

``SLIMRT_BACKEND=auto`` (default: native C++ on CPU, Triton on CUDA when present), ``reference``
(PyTorch reference everywhere), or ``triton`` (Triton kernels for every device; on CPU tensors
only meaningful with ``TRITON_INTERPRET=1``). slimrt.ops calls ``register()`` after ops/_library.py
has defined the schemas; the fake kernels there read ``backend()``. A module of its own so that
_library.py can read the choice without importing the package that imports it.
"""

from __future__ import annotations

import os

import torch

_IMPL_LIB = torch.library.Library("slimrt", "IMPL")
_BACKEND = os.environ.get("SLIMRT_BACKEND", "auto").strip().lower() or "auto"
_registered: list[str] = []


def register() -> None:
    """Registers the native and Triton kernels that ``SLIMRT_BACKEND`` asks for (once, by slimrt.ops)."""
    if _BACKEND not in ("auto", "reference", "triton"):
        raise ValueError(f"SLIMRT_BACKEND={_BACKEND!r} is not one of auto, reference, triton")
    if _BACKEND == "auto":
        from slimrt import _native

        if _native.available():
            from slimrt.ops import cpu

            cpu.register(_IMPL_LIB)
            _registered.append("cpu:native")
    # Triton: ops/cuda.py imports triton only when an op first runs.
    if _BACKEND == "triton":
        from slimrt.ops import cuda

        cuda.register(_IMPL_LIB, ("CPU", "CUDA"))
        _registered.extend(["cpu:triton", "cuda:triton"])
    elif _BACKEND == "auto" and torch.cuda.is_available():
        from slimrt.ops import cuda

        if cuda.triton_found():
            cuda.register(_IMPL_LIB, ("CUDA",))
            _registered.append("cuda:triton")


def backend() -> dict[str, str]:
    """Which implementation serves each device: 'native', 'triton' or 'reference'."""
    cpu = "native" if "cpu:native" in _registered else "triton" if "cpu:triton" in _registered else "reference"
    cuda = "triton" if any(r.startswith("cuda:") for r in _registered) else "reference"
    return {"requested": _BACKEND, "cpu": cpu, "cuda": cuda}
