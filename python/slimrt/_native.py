"""Loading the native extension and choosing its instruction set.

The extension decides the ISA from CPUID + XGETBV at first use. ``SLIMRT_ISA=scalar|avx2|avx512``
forces a path; asking for one this CPU cannot run is an error, never an illegal instruction.
Inside the avx512 path the int8 GEMM runs on AMX tiles where the CPU and OS offer them
(Intel Sapphire Rapids and later); ``SLIMRT_AMX=0`` keeps it on AVX-512 VNNI, ``SLIMRT_AMX=1``
insists on AMX (an error where there is none).

Threading: the kernels' parallel loops run on the OpenMP runtime that torch itself uses (found in
the process, never loaded a second time), so torch ops and slimrt kernels share one team of
threads in either import order. ``SLIMRT_THREADING=pool`` runs them on slimrt's own pool instead
(for comparisons), ``SLIMRT_THREADING=openmp`` insists on OpenMP (an error where torch has none).
The thread count is ``torch.get_num_threads()``, read at every call.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

_C: ModuleType | None = None
_load_error: str | None = None
_threading_note: str | None = None  # why the kernels run on the own pool, when they do


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
    _attach_threading(ext, os.environ.get("SLIMRT_THREADING", "").strip().lower())
    _C = ext
    return ext


def _torch_anchor() -> str:
    """The path of the torch library whose OpenMP runtime the kernels should share."""
    import torch

    lib = Path(torch.__file__).resolve().parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if (lib / name).exists():
            return str(lib / name)
    return str(lib / "libtorch_cpu.so")  # not there: use_openmp_runtime names it in its error


def _attach_threading(ext: ModuleType, mode: str) -> None:
    global _threading_note
    if mode not in ("", "openmp", "pool"):
        raise ValueError(f"SLIMRT_THREADING={mode!r} is not one of openmp, pool")
    if mode == "pool":
        ext.use_own_pool()
        _threading_note = "SLIMRT_THREADING=pool"
        return
    try:
        ext.use_openmp_runtime(_torch_anchor())
        _threading_note = None
    except RuntimeError as e:
        if mode == "openmp":
            raise ValueError(f"SLIMRT_THREADING=openmp, but {e}") from e
        ext.use_own_pool()
        _threading_note = str(e)


def set_threading(mode: str) -> None:
    """Runs the kernels' parallel loops on torch's OpenMP runtime ('openmp') or slimrt's own pool ('pool')."""
    if mode not in ("openmp", "pool"):
        raise ValueError(f"set_threading: mode={mode!r} is not one of 'openmp', 'pool'")
    _attach_threading(load(), mode)


def threading_info() -> dict[str, object]:
    """Which runtime runs the kernels' parallel loops, its library, and the thread count in use."""
    import torch

    ext = load()
    out: dict[str, object] = {"runtime": ext.parallel_runtime(), "num_threads": torch.get_num_threads()}
    if out["runtime"] == "openmp":
        out["library"] = ext.parallel_runtime_path()
    elif _threading_note:
        out["reason"] = _threading_note
    return out


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
