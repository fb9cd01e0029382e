"""lowrank_linear: y = (x @ v.T) @ u.T + bias with the rank-R intermediate kept on chip.

Spec: slimrt.ops.reference.lowrank_linear. x (M, K), v (R, K), u (N, R), bias (N,) -> y (M, N).
Fused path (R <= MAX_FUSED_RANK): a program owns BLOCK_M rows, computes h = x_tile @ v.T into
registers (BLOCK_M x R, fp32) with one tl.dot per K tile, then loops over its share of the N tiles
with a second tl.dot h @ u_tile.T; h never touches memory. The N tiles of one row tile are split over
N_SPLIT programs (each recomputes its h) so that a decode call (M = 1) still fills the GPU; the extra
work is N_SPLIT * M * K * R flops, small next to reading v once per program from L2.
Above MAX_FUSED_RANK the fp32 h no longer fits in registers: two launches through HBM instead.
Precision: h is fp32; for bf16 inputs it is rounded to bf16 for the second tensor-core dot (what a
bf16 PyTorch x @ v.T @ u.T does too); fp32 inputs use IEEE fp32 dots throughout.
Napkin math: flops 2 * M * R * (K + N) vs 2 * M * K * N dense; at rank R = K / 8 and N = K, 1/4 of the work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cast_out, check_device, dot_precision, mma, rows

MAX_FUSED_RANK = 256


@triton.jit
def _lowrank_linear_kernel(
    x_ptr, v_ptr, u_ptr, bias_ptr, out_ptr,
    M, N, K, R, stride_xm, stride_xk, stride_vr, stride_vk, stride_un, stride_ur, stride_om, stride_on,
    N_SPLIT,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_r = offs_r < R
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    v_cols = v_ptr + offs_r.to(tl.int64)[None, :] * stride_vr

    # Stage 1: h (BLOCK_M, BLOCK_R) = x_tile (BLOCK_M, K) @ v.T (K, R), fp32 in registers.
    h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        x = tl.load(x_rows + kk[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        v = tl.load(v_cols + kk[:, None] * stride_vk, mask=mask_k[:, None] & mask_r[None, :], other=0.0)
        h = tl.dot(mma(x), mma(v), h, input_precision=DOT_PRECISION)
    h_in = cast_out(h, u_ptr.dtype.element_ty)

    # Stage 2: for each N tile of this program's share, y = h @ u_tile.T (+ bias).
    num_n = tl.cdiv(N, BLOCK_N)
    for pid_n in range(pid_s, num_n, N_SPLIT):
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        u = tl.load(u_ptr + offs_n.to(tl.int64)[None, :] * stride_un + offs_r[:, None] * stride_ur,
                    mask=mask_r[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_R, BLOCK_N)
        y = tl.dot(mma(h_in), mma(u), input_precision=DOT_PRECISION)
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, cast_out(y, out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _lowrank_stage_kernel(
    a_ptr, b_ptr, bias_ptr, out_ptr, M, N, K, stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One stage of the unfused path: out (M, N) = a (M, K) @ b (N, K).T (+ bias), fp32 accumulation."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_cols = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        a = tl.load(a_rows + kk[None, :] * stride_ak, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_cols + kk[:, None] * stride_bk, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(mma(a.to(b.dtype)), mma(b), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, cast_out(acc, out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def lowrank_linear(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                   max_fused_rank: int = MAX_FUSED_RANK) -> torch.Tensor:
    """x (..., K), v (R, K), u (N, R) of x's dtype, bias (N,) or None -> y (..., N) in x.dtype.

    max_fused_rank picks the path (tests lower it to exercise the two-launch path on small shapes).
    Arguments are checked by the op layer (slimrt.ops); this launcher trusts them.
    """
    check_device("lowrank_linear", x, u, v, bias)
    lead, k = x.shape[:-1], x.shape[-1]
    n, r = u.shape
    x2 = rows(x)  # (M, K)
    m = x2.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out.reshape(*lead, n)
    if k == 0 or r == 0:  # empty inner sum
        return out.copy_(torch.zeros((m, n), device=x.device) + (0 if bias is None else bias.float())).reshape(*lead, n)
    prec = dot_precision(x.dtype)
    bias_arg = bias if bias is not None else out
    if r <= max_fused_rank:
        block_r = max(16, triton.next_power_of_2(r))
        if INTERPRET:
            block_m, block_n, block_k, warps = 16, 16, 32, 4
        else:  # keep h (BLOCK_M x BLOCK_R fp32) at <= 64 KB of registers per program
            block_m = 16 if m <= 16 else (64 if block_r <= 128 else 32)
            block_n, block_k, warps = 64, 64, 4 if block_r <= 64 else 8
        num_m = triton.cdiv(m, block_m)
        n_split = max(1, min(triton.cdiv(n, block_n), triton.cdiv(2 * _num_sms(x.device), num_m)))
        _lowrank_linear_kernel[(num_m, n_split)](
            x2, v, u, bias_arg, out, m, n, k, r,
            x2.stride(0), x2.stride(1), v.stride(0), v.stride(1), u.stride(0), u.stride(1),
            out.stride(0), out.stride(1), n_split,
            HAS_BIAS=bias is not None, DOT_PRECISION=prec,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=block_r, num_warps=warps,
        )
    else:
        h = torch.empty((m, r), dtype=torch.float32, device=x.device)  # (M, R) fp32 through HBM
        _stage(x2, v, None, h, prec)
        _stage(h, u, bias, out, prec)
    return out.reshape(*lead, n)


def _stage(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, prec: str) -> None:
    m, k = a.shape
    n = b.shape[0]
    bm, bn, bk, warps = (16, 16, 32, 4) if INTERPRET else ((16 if m <= 16 else 64), 128, 64, 4)
    _lowrank_stage_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        a, b, bias if bias is not None else out, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
    )
