"""slimrt ops: typed entry points over ``torch.ops.slimrt.*``.

Which kernel runs is decided by op registration, per dispatch key, once at import (see
ops/_backend.py: ``SLIMRT_BACKEND=auto|reference|triton``; ``backend()`` says what serves each
device). ops/_library.py declares the schemas, ops/reference.py is the spec every kernel is tested
against, ops/cpu.py and ops/cuda.py register the native and Triton kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slimrt.attention import BlockMask
from slimrt.ops import _check, _library, reference  # noqa: F401  (_library defines the schemas)
from slimrt.ops import _backend  # after _library: it registers kernels for the schemas defined there
from slimrt.ops._backend import backend

_backend.register()

# Resolved OpOverloads for the int8 decode path: calling ``torch.ops.slimrt.x.default`` skips the
# overload-packet lookup (a few us per call; see the overhead table of benchmarks/bench_int8_gemm.py).
_INT8_LINEAR = torch.ops.slimrt.int8_linear.default
_INT8_WEIGHT_ONLY_LINEAR = torch.ops.slimrt.int8_weight_only_linear.default
_W4_LINEAR = torch.ops.slimrt.w4_linear.default


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
                w_packed: Tensor | None = None, activation: str = "none") -> Tensor:
    """W8A8 linear with dynamic per-token activation quantization, optionally followed by an
    activation fused into the kernel's epilogue ("none", "gelu", "gelu_tanh", "relu", "silu"). See
    reference.int8_linear."""
    return _INT8_LINEAR(x, w_q, w_scale, bias, w_packed, activation)


def int8_weight_only_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                            w_packed: Tensor | None = None) -> Tensor:
    """Float activations times int8 weights dequantized on the fly. See reference.int8_weight_only_linear."""
    return _INT8_WEIGHT_ONLY_LINEAR(x, w_q, w_scale, bias, w_packed)


def lowrank_linear(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = (x @ v.T) @ u.T + bias with u (N, R), v (R, K). See reference.lowrank_linear."""
    return torch.ops.slimrt.lowrank_linear(x, u, v, bias)


def w4_pack_weight(w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, group_size: int,
                   in_features: int) -> Tensor:
    """Packs an int4 weight once for the device's kernel; empty when the device needs no packing."""
    return torch.ops.slimrt.w4_pack_weight(w_q4, w_scale, w_zero, group_size, in_features)


def w4_linear(x: Tensor, w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None = None, bias: Tensor | None = None,
              w_packed: Tensor | None = None, group_size: int = 32) -> Tensor:
    """int4-weight linear with int8 activations quantized per group. See reference_w4 (the spec)."""
    return _W4_LINEAR(x, w_q4, w_scale, w_zero, bias, w_packed, group_size)


# ---- block-sparse attention ----
def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, mask: BlockMask, scale: float | None = None) -> Tensor:
    """Softmax attention over exactly the token pairs mask.to_dense(Lq, Lk) allows.

    q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) float32|bfloat16 with Hq % Hkv == 0 -> out (B, Hq, Lq, D)
    in q.dtype; scale defaults to 1/sqrt(D); a query with no allowed key gives zeros.
    Inference-only: inputs that require grad are refused while grad mode is on.
    See slimrt.attention for the mask and reference.block_sparse_attention for the math.
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"block_sparse_attention: mask must be a slimrt.BlockMask, got {type(mask).__name__}")
    if isinstance(q, Tensor) and isinstance(k, Tensor) and q.dim() == 4 and k.dim() == 4:
        mask.check_lengths(q.shape[2], k.shape[2], "block_sparse_attention", layout=False)
    _check.no_grad_needed("block_sparse_attention", q=q, k=k, v=v)
    return torch.ops.slimrt.block_sparse_attention(q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.block_size,
                                                   mask.causal, mask.window, mask.num_global, mask.token_mask,
                                                   scale)


# ---- varlen attention (packed sequences without padding) ----
def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool = False,
                     scale: float | None = None) -> Tensor:
    """Attention within each of several sequences packed back to back (no padding tokens).

    q (T, Hq, D), k and v (T, Hkv, D) float32|bfloat16 with Hq % Hkv == 0; cu_seqlens (B + 1,) int64,
    sequence b = tokens [cu[b], cu[b+1]) -> out (T, Hq, D) in q.dtype. Each query attends to the keys
    of its own sequence only (causal: up to itself). Inference-only. See reference.varlen_attention.
    """
    _check.no_grad_needed("varlen_attention", q=q, k=k, v=v)
    return torch.ops.slimrt.varlen_attention(q, k, v, cu_seqlens, causal, scale)


__all__ = [
    "block_sparse_attention", "varlen_attention",
    "backend", "reference", "quantize_per_token", "quantize_per_channel", "int8_gemm", "int8_pack_weight",
    "int8_linear", "int8_weight_only_linear", "lowrank_linear", "w4_pack_weight", "w4_linear",
]
