"""slimrt.info(): what this installation will run on."""

from __future__ import annotations

import importlib.util
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
    else:
        out["isa"] = "reference"
        out["isa_available"] = []
        out["native_error"] = _native._load_error
    out["triton"] = importlib.util.find_spec("triton") is not None
    out["cuda"] = bool(torch.cuda.is_available())
    from slimrt.ops import backend

    out["backend"] = backend()
    return out
