"""slimrt ops: typed entry points over ``torch.ops.slimrt.*``.

Which kernel runs is decided by op registration, per dispatch key, once at import:
``SLIMRT_BACKEND=auto`` (default: native C++ on CPU, Triton on CUDA when present),
``reference`` (PyTorch reference everywhere), or ``triton`` (Triton kernels for every device;
on CPU tensors only meaningful with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from slimrt.ops import _library, reference

_IMPL_LIB = torch.library.Library("slimrt", "IMPL")
_BACKEND = os.environ.get("SLIMRT_BACKEND", "auto").strip().lower() or "auto"
_registered: list[str] = []


def _register() -> None:
    if _BACKEND not in ("auto", "reference", "triton"):
        raise ValueError(f"SLIMRT_BACKEND={_BACKEND!r} is not one of auto, reference, triton")
    if _BACKEND == "auto":
        from slimrt import _native

        if _native.available():
            from slimrt.ops import cpu

            cpu.register(_IMPL_LIB)
            _registered.append("cpu:native")


def backend() -> dict[str, str]:
    """Which implementation serves each device: 'native', 'triton' or 'reference'."""
    cpu = "native" if "cpu:native" in _registered else "reference"
    cuda = "triton" if any(r.startswith("cuda:") for r in _registered) else "reference"
    return {"requested": _BACKEND, "cpu": cpu, "cuda": cuda}


_register()

# Resolved OpOverloads for the int8 decode path: calling ``torch.ops.slimrt.x.default`` skips the
# overload-packet lookup (a few us per call; see the overhead table of benchmarks/bench_int8_gemm.py).
_INT8_LINEAR = torch.ops.slimrt.int8_linear.default
_INT8_WEIGHT_ONLY_LINEAR = torch.ops.slimrt.int8_weight_only_linear.default


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., K) float -> (x_q (..., K) int8, x_scale (...) float32). See reference.quantize_per_token."""
    return torch.ops.slimrt.quantize_per_token(x)


def quantize_per_channel(w: Tensor) -> tuple[Tensor, Tensor]:
    """w (N, K) float -> (w_q (N, K) int8, w_scale (N,) float32). See reference.quantize_per_channel."""
    return torch.ops.slimrt.quantize_per_channel(w)


def int8_gemm(a: Tensor, b: Tensor, a_scale: Tensor | None = None, b_scale: Tensor | None = None,
              out_dtype: torch.dtype = torch.float32) -> Tensor:
    """(a (M, K) int8 @ b (N, K) int8 .T) * a_scale * b_scale -> (M, N). See reference.int8_gemm."""
    return torch.ops.slimrt.int8_gemm(a, b, a_scale, b_scale, out_dtype)


def int8_pack_weight(w_q: Tensor) -> Tensor:
    """Packs w_q (N, K) int8 once for the device's kernel; empty when the device needs no packing."""
    return torch.ops.slimrt.int8_pack_weight(w_q)


def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                w_packed: Tensor | None = None) -> Tensor:
    """W8A8 linear with dynamic per-token activation quantization. See reference.int8_linear."""
    return _INT8_LINEAR(x, w_q, w_scale, bias, w_packed)


def int8_weight_only_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                            w_packed: Tensor | None = None) -> Tensor:
    """Float activations times int8 weights dequantized on the fly. See reference.int8_weight_only_linear."""
    return _INT8_WEIGHT_ONLY_LINEAR(x, w_q, w_scale, bias, w_packed)


def lowrank_linear(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = (x @ v.T) @ u.T + bias with u (N, R), v (R, K). See reference.lowrank_linear."""
    return torch.ops.slimrt.lowrank_linear(x, u, v, bias)


__all__ = [
    "backend", "reference", "quantize_per_token", "quantize_per_channel", "int8_gemm", "int8_pack_weight",
    "int8_linear", "int8_weight_only_linear", "lowrank_linear",
]
