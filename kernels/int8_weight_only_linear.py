"""int8_weight_only_linear: float activations times int8 weights dequantized in registers (decode path).

Spec: slimrt.ops.reference.int8_weight_only_linear.
    y[m, n] = (sum_k x[m, k] * w_q[n, k]) * w_scale[n] (+ bias[n]) (-> activation), fp32 accumulation.
The per-channel scale is constant along K, so it leaves the K loop: the weight tile is only converted
int8 -> x.dtype (exact for |w| <= 127 in bf16) and fed to tl.dot; the scale is one multiply per output.
Napkin math: at M = 1 the kernel streams N * K bytes of weight (half of bf16's traffic), so its bound is
HBM bandwidth: 4096 x 4096 -> 16.8 MB -> ~3.5 us at 4.8 TB/s (H200).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET, apply_activation, autotune, cast_out, check_activation, check_device, dot_precision, int8_operand, mma,
    rows,
)

CONFIGS = [
    # decode: the smallest MMA M, narrow N tiles so that N / BLOCK_N programs fill the SMs
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    # prefill
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
]
INTERP_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}


@triton.jit
def _int8_weight_only_linear_kernel(
    x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    m_bucket,  # autotune key only
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Program order: consecutive programs take consecutive N tiles of the same rows, so x stays in L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        x = tl.load(x_rows + kk[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_cols + kk[:, None] * stride_wk, mask=mask_k[:, None] & mask_n[None, :], other=0)
        # (BM, BK) @ (BK, BN) -> fp32
        acc = tl.dot(mma(x), int8_operand(w, x.dtype), acc, input_precision=DOT_PRECISION)

    y = acc * tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(y, ACTIVATION)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, cast_out(y, out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_tuned = autotune(CONFIGS, key=["m_bucket", "N", "K", "HAS_BIAS", "DOT_PRECISION"])(_int8_weight_only_linear_kernel)


def int8_weight_only_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                            bias: torch.Tensor | None = None, activation: str | None = None,
                            config: dict | None = None) -> torch.Tensor:
    """x (..., K) float32|bfloat16, w_q (N, K) int8, w_scale (N,) fp32, bias (N,) -> y (..., N) in x.dtype.

    config forces one tile config (tests). Arguments are checked by the op layer (slimrt.ops).
    """
    check_device("int8_weight_only_linear", x, w_q, w_scale, bias)
    act = check_activation("int8_weight_only_linear", activation)
    lead, k = x.shape[:-1], x.shape[-1]
    n = w_q.shape[0]
    x2 = rows(x)  # (M, K)
    m = x2.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out.reshape(*lead, n)
    if k == 0:
        y = torch.zeros((m, n), device=x.device) + (0 if bias is None else bias.float())
        from .int8_gemm import _torch_activation

        return out.copy_(_torch_activation(y, act)).reshape(*lead, n)
    if config is None and INTERPRET:
        config = INTERP_CONFIG
    kernel, meta = (_int8_weight_only_linear_kernel, dict(config)) if config is not None else (_tuned, {})

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    kernel[grid](
        x2, w_q, w_scale, bias if bias is not None else out, out,
        m, n, k, x2.stride(0), x2.stride(1), w_q.stride(0), w_q.stride(1), out.stride(0), out.stride(1),
        triton.next_power_of_2(m),
        HAS_BIAS=bias is not None, ACTIVATION=act, DOT_PRECISION=dot_precision(x.dtype), **meta,
    )
    return out.reshape(*lead, n)
