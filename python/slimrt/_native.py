"""Loading the native extension and choosing its instruction set.

The extension decides the ISA from CPUID + XGETBV at first use. ``SLIMRT_ISA=scalar|avx2|avx512``
forces a path; asking for one this CPU cannot run is an error, never an illegal instruction.
Inside the avx512 path the int8 GEMM runs on AMX tiles where the CPU and OS offer them
(Intel Sapphire Rapids and later); ``SLIMRT_AMX=0`` keeps it on AVX-512 VNNI, ``SLIMRT_AMX=1``
insists on AMX (an error where there is none).
"""

from __future__ import annotations

import os
from types import ModuleType

_C: ModuleType | None = None
_load_error: str | None = None


class NativeUnavailableError(RuntimeError):
    """The compiled extension slimrt._C could not be imported."""


def load() -> ModuleType:
    """Returns slimrt._C, applying SLIMRT_ISA on first load; raises NativeUnavailableError if missing."""
    global _C, _load_error
    if _C is not None:
        return _C
    if _load_error is not None:
        raise NativeUnavailableError(_load_error)
    try:
        from slimrt import _C as ext  # type: ignore[attr-defined]
    except ImportError as e:
        _load_error = (
            f"slimrt's native extension (slimrt._C) is not built ({e}); reinstall with "
            "`pip install -e .` (needs a C++17 compiler and cmake), or use the PyTorch reference "
            "kernels, which work without it"
        )
        raise NativeUnavailableError(_load_error) from e
    forced = os.environ.get("SLIMRT_ISA", "").strip().lower()
    if forced:
        if forced not in ("scalar", "avx2", "avx512"):
            raise ValueError(f"SLIMRT_ISA={forced!r} is not one of scalar, avx2, avx512")
        ext.set_isa(forced)  # raises ValueError if this CPU cannot run it
    amx = os.environ.get("SLIMRT_AMX", "").strip().lower()
    if amx:
        if amx not in ("0", "1"):
            raise ValueError(f"SLIMRT_AMX={amx!r} is not 0 or 1")
        if amx == "1" and ext.active_isa() != "avx512":
            raise ValueError(f"SLIMRT_AMX=1 needs the avx512 path, but the active one is {ext.active_isa()!r}")
        ext.set_amx(amx == "1")  # raises ValueError without AMX
    _C = ext
    return ext


def available() -> bool:
    try:
        load()
        return True
    except NativeUnavailableError:
        return False


def set_isa(isa: str) -> None:
    """Forces the kernels onto one ISA path ('scalar', 'avx2', 'avx512') for this process."""
    load().set_isa(isa)


def set_amx(on: bool) -> None:
    """Lets the avx512 int8 GEMM use AMX tiles (True, an error where there are none) or not (False)."""
    load().set_amx(bool(on))
