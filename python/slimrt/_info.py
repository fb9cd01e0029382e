"""slimrt.info(): what this installation will run on."""

from __future__ import annotations

import os
from typing import Any

from slimrt import _native
from slimrt._version import __version__


def info() -> dict[str, Any]:
    """Returns a dict describing the build, the chosen kernels and the optional pieces found."""
    import torch

    out: dict[str, Any] = {
        "version": __version__,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "native": _native.available(),
    }
    if out["native"]:
        ext = _native.load()
        out["isa"] = ext.active_isa()
        out["isa_best"] = ext.best_isa()
        out["isa_available"] = list(ext.available_isas())
        out["cpu_features"] = dict(ext.cpu_features())
        out["int8_gemm"] = "amx" if ext.amx_active() else ("vnni" if out["isa"] == "avx512" else out["isa"])
        out["threading"] = _native.threading_info()
    else:
        out["isa"] = "reference"
        out["isa_available"] = []
        out["native_error"] = _native._load_error
    from slimrt.ops.cuda import triton_found, triton_version

    out["triton"] = triton_found()  # found, not imported: import slimrt stays lean
    if out["triton"]:
        out["triton_version"] = triton_version()
    out["cuda"] = bool(torch.cuda.is_available())
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name()
    from slimrt.ops import backend

    out["backend"] = backend()
    return out
