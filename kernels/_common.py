"""Shared pieces of the Triton kernels: interpreter detection, rounding, autotune switch, launch checks."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import triton
import triton.language as tl

# Decided once, when the kernels are decorated: triton.jit returns an interpreted function exactly
# when this is true, so a later change of TRITON_INTERPRET has no effect on these kernels.
_knobs = getattr(triton, "knobs", None)
INTERPRET: bool = bool(_knobs.runtime.interpret) if _knobs is not None else os.environ.get("TRITON_INTERPRET") == "1"

if INTERPRET:

    @triton.jit
    def rint(x):
        """Round half to even in fp32: adding 1.5 * 2^23 leaves no fraction bits, so the FPU's
        round-to-nearest-even does the rounding (valid for |x| < 2^22; quantized values are <= 127).
        The interpreter has no libdevice."""
        return (x + 12582912.0) - 12582912.0

else:
    from triton.language.extra import libdevice

    @triton.jit
    def rint(x):
        """Round half to even (cvt.rni), the rounding torch.round uses."""
        return libdevice.rint(x)


if INTERPRET:

    @triton.jit
    def cast_out(y, dtype: tl.constexpr):
        """fp32 tile -> output dtype. The interpreter's fp32 -> bf16 cast rounds ties away from zero and
        mishandles mantissa carries, so bf16 is rounded here by hand (to nearest even, NaN kept)."""
        if dtype == tl.bfloat16:
            bits = y.to(tl.uint32, bitcast=True)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded = tl.where(y != y, 0x7FC0, rounded)
            return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return y.to(dtype)

else:

    @triton.jit
    def cast_out(y, dtype: tl.constexpr):
        """fp32 tile -> output dtype (cvt.rn: round to nearest even, as torch's .to())."""
        return y.to(dtype)


if INTERPRET:

    @triton.jit
    def mma(x):
        """A tl.dot operand. The interpreter multiplies bf16 tiles as raw 16-bit integers (garbage), so
        bf16 goes in as fp32 there: exact, and the same products a GPU's bf16 MMA accumulates in fp32."""
        if x.dtype == tl.bfloat16:
            return x.to(tl.float32)
        return x

    @triton.jit
    def int8_operand(w, dtype: tl.constexpr):
        """An int8 weight tile as a tl.dot operand (fp32 here: the interpreter's int8 -> bf16 cast is wrong)."""
        return w.to(tl.float32)

else:

    @triton.jit
    def mma(x):
        """A tl.dot operand, as is (bf16 runs on the tensor cores)."""
        return x

    @triton.jit
    def int8_operand(w, dtype: tl.constexpr):
        """An int8 weight tile as a tl.dot operand of dtype (exact: |w| <= 127 fits bf16's 8-bit mantissa)."""
        return w.to(dtype)


@triton.jit
def apply_activation(y, ACTIVATION: tl.constexpr):
    """Epilogue activation on an fp32 tile: "" (none), "relu", "silu", "gelu" (erf form, torch's default)
    or "gelu_tanh" (the tanh approximation: 1 + tanh(z) = 2 / (1 + e^{-2z}))."""
    if ACTIVATION == "relu":
        y = tl.maximum(y, 0.0)
    elif ACTIVATION == "silu":
        y = y / (1.0 + tl.exp(-y))
    elif ACTIVATION == "gelu":
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACTIVATION == "gelu_tanh":
        z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        e = tl.exp(-2.0 * tl.abs(z))
        y = y * tl.where(z >= 0, 1.0, e) / (1.0 + e)
    return y


ACTIVATIONS = ("", "relu", "silu", "gelu", "gelu_tanh")


def check_activation(op: str, activation: str | None) -> str:
    act = activation or ""
    if act not in ACTIVATIONS + ("none",):
        raise ValueError(f"{op}: activation {activation!r} is not one of None, 'relu', 'silu', 'gelu', 'gelu_tanh'")
    return "" if act == "none" else act


def autotune(configs: list[triton.Config], key: list[str]) -> Callable[[Any], Any]:
    """triton.autotune on a GPU; the bare kernel under the interpreter, where each launcher passes one
    fixed small config instead (benchmarking every config there would take minutes per shape)."""

    def deco(kernel: Any) -> Any:
        return kernel if INTERPRET else triton.autotune(configs=configs, key=key)(kernel)

    return deco


def check_device(op: str, *tensors: torch.Tensor | None) -> None:
    """Triton runs CUDA tensors, or CPU tensors only through the interpreter: say so instead of crashing."""
    for t in tensors:
        if t is not None and t.device.type != "cuda" and not INTERPRET:
            raise RuntimeError(
                f"slimrt.kernels.{op}: got a tensor on {t.device}, but the Triton kernels need a CUDA device; "
                "to run them on the CPU through the Triton interpreter (slow, for tests), set TRITON_INTERPRET=1 "
                "before slimrt's Triton kernels are first used"
            )


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: IEEE fp32 products (the spec is fp32; TF32 would lose 13 mantissa bits). Others: native."""
    return "ieee" if dtype == torch.float32 else "tf32"


def rows(x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K), a view where strides allow (kernels take both strides, so no contiguity needed)."""
    return x.reshape(x.shape[:-1].numel(), x.shape[-1])


def tl_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]
