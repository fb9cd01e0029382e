"""w4_linear: int4 weights in groups along K times activations quantized to int8 per group.

Spec: slimrt.ops.reference_w4.w4_linear. Per group g of G columns of K, a program quantizes its
(BLOCK_M, G) slice of x (quantize_per_token's rule on the group: amax / 127, round half even),
unpacks the (G, BLOCK_N) codes from the two-per-byte rows of w_q4, subtracts the zero points and
takes the exact integer dot (small integers in fp32: products and sums stay exact below 2^24, so
even a TF32 MMA is exact), then acc += isum * (scale * x_scale) in group order, as the spec.
Under the interpreter (fp32, no FMA contraction) the result is the spec's bit for bit; on a GPU the
compiler may fuse that multiply-add (one rounding less), so there the bound is a few fp32 ulps of acc.
Napkin math: at M = 1 the kernel streams N * K / 2 bytes of codes plus 3 bytes per group and row:
4096 x 11008 at G = 64 -> 24.6 MB -> ~5 us at 4.8 TB/s (H200).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cast_out, check_device, rows
from .quantize_per_token import quantize_tile, row_absmax, row_scales

INTERP_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}


@triton.jit
def _w4_linear_kernel(
    x_ptr, q4_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr,
    M, N, K, NG, stride_xm, stride_xk, stride_qn, stride_om, stride_on,
    G: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = pid // num_n, pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_g = tl.arange(0, G)
    mask_m, mask_n = offs_m < M, offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    q_cols = q4_ptr + offs_n.to(tl.int64)[None, :] * stride_qn  # (1, BN)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, NG):
        kk = g * G + offs_g  # (G,)
        x = tl.load(x_rows + kk[None, :] * stride_xk, mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        amax, n_bad = row_absmax(x.to(tl.float32))
        inv, x_scale = row_scales(amax, n_bad)
        xq = quantize_tile(x.to(tl.float32), inv).to(tl.float32)  # (BM, G) small integers
        # codes (G, BN): byte kk // 2 of each row, low nibble for even kk (zero past K: the padding codes)
        byte = tl.load(q_cols + (kk // 2)[:, None], mask=mask_n[None, :], other=0).to(tl.int32)
        codes = ((byte >> ((kk % 2) * 4)[:, None]) & 15).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(zero_ptr + offs_n * NG + g, mask=mask_n, other=0).to(tl.float32)
        else:
            z = tl.full((BLOCK_N,), 8.0, tl.float32)
        w_scale = tl.load(scale_ptr + offs_n * NG + g, mask=mask_n, other=0.0).to(tl.float32)
        isum = tl.dot(xq, codes - z[None, :], input_precision="ieee")  # (BM, BN), exact integers
        acc = acc + isum * (w_scale[None, :] * x_scale[:, None])
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, cast_out(acc, out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def w4_linear(x: torch.Tensor, w_q4: torch.Tensor, w_scale: torch.Tensor, w_zero: torch.Tensor | None,
              bias: torch.Tensor | None, group_size: int, config: dict | None = None) -> torch.Tensor:
    """x (..., K) float32|bfloat16, w_q4 (N, ng G / 2) uint8, w_scale (N, ng) fp16, w_zero (N, ng) uint8 or
    None, bias (N,) -> y (..., N) in x.dtype. Arguments are checked by the op layer (slimrt.ops)."""
    check_device("w4_linear", x, w_q4, w_scale, w_zero, bias)
    lead, k = x.shape[:-1], x.shape[-1]
    n = w_q4.shape[0]
    ng = -(-k // group_size)
    x2 = rows(x)  # (M, K)
    m = x2.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out.reshape(*lead, n)
    if k == 0:
        return out.copy_(torch.zeros((m, n), device=x.device) + (0 if bias is None else bias.float())).reshape(*lead, n)
    cfg = dict(config or (INTERP_CONFIG if INTERPRET else {"BLOCK_M": 16 if m <= 16 else 64, "BLOCK_N": 64}))
    q4, sc = w_q4.contiguous(), w_scale.contiguous()
    z = None if w_zero is None else w_zero.contiguous()
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _w4_linear_kernel[grid](
        x2, q4, sc, z if z is not None else q4, bias if bias is not None else out, out,
        m, n, k, ng, x2.stride(0), x2.stride(1), q4.stride(0), out.stride(0), out.stride(1),
        G=group_size, HAS_ZERO=z is not None, HAS_BIAS=bias is not None, **cfg,
    )
    return out.reshape(*lead, n)
