"""quantize_per_token: symmetric int8 quantization of each row, one pass over the row where it fits.

Spec: slimrt.ops.reference.quantize_per_token. Bit-exact with it: 1 / amax and amax / 127 use
IEEE division (tl.div_rn; plain `/` may lower to an approximate division on GPUs) and the rounding
is half-to-even (kernels/_common.rint), so x * inv rounds exactly as torch.round does.
Napkin math: memory bound, 2 + 1 bytes per bf16 element (read x, write q) + 4 bytes per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, check_device, rint, rows

# One program reads a (BLOCK_M, K) slab once when K <= MAX_ONE_PASS_K (the row stays in registers);
# longer rows take a second, mostly L2-resident, read.
MAX_ONE_PASS_K = 8192


@triton.jit
def row_absmax(x):
    """x (BLOCK_M, BLOCK_K) fp32 -> (max |x| over finite entries, count of NaN/Inf entries) per row.
    x - x is 0 exactly for finite x and NaN for NaN/Inf, which sidesteps max() dropping NaNs."""
    bad = (x - x) != 0.0
    amax = tl.max(tl.where(bad, 0.0, tl.abs(x)), axis=1)
    return amax, tl.sum(bad.to(tl.int32), axis=1)


@triton.jit
def row_scales(amax, n_bad):
    """(amax, n_bad) per row -> (inv = 127 / amax or 0, scale = amax / 127, NaN for a NaN/Inf row).

    inv is formed as (1 / amax) * 127, not 127 / amax: that is what the reference's `127 / tensor`
    computes (torch implements a scalar divided by a tensor as reciprocal() * scalar), and the two
    differ in the last bit often enough to flip a rounding (x * inv = 63.5000038 vs 63.4999962)."""
    finite = n_bad == 0
    ok = finite & (amax > 0.0)
    inv = tl.where(ok, tl.div_rn(tl.full(amax.shape, 1.0, tl.float32), tl.where(ok, amax, 1.0)) * 127.0, 0.0)
    scale = tl.where(finite, tl.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32)), float("nan"))
    return inv, scale


@triton.jit
def quantize_tile(x, inv):
    """x (BLOCK_M, BLOCK_K) fp32 * inv (BLOCK_M,) -> int8, round half even, clamped to +-127."""
    q = rint(x * inv[:, None])
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    # A NaN/Inf row has inv = 0 but x * 0 is NaN there: zero it (the reference writes q = 0).
    return tl.where(inv[:, None] != 0.0, q, 0.0).to(tl.int8)


@triton.jit
def _quantize_per_token_kernel(
    x_ptr, q_ptr, scale_ptr, M, K, stride_xm, stride_xk,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr,
):
    # x: (M, K) float, q: (M, K) int8 contiguous, scale: (M,) fp32.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    q_rows = q_ptr + offs_m.to(tl.int64)[:, None] * K
    if ONE_PASS:
        mask = mask_m[:, None] & (offs_k[None, :] < K)
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        amax, n_bad = row_absmax(x)
        inv, scale = row_scales(amax, n_bad)
        tl.store(q_rows + offs_k[None, :], quantize_tile(x, inv), mask=mask)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        n_bad = tl.zeros([BLOCK_M], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mask = mask_m[:, None] & (kk[None, :] < K)
            x = tl.load(x_rows + kk[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
            a, b = row_absmax(x)
            amax = tl.maximum(amax, a)
            n_bad += b
        inv, scale = row_scales(amax, n_bad)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mask = mask_m[:, None] & (kk[None, :] < K)
            x = tl.load(x_rows + kk[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_rows + kk[None, :], quantize_tile(x, inv), mask=mask)
    tl.store(scale_ptr + offs_m, scale, mask=mask_m)


def quantize_per_token(x: torch.Tensor, block_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) float32|bfloat16 -> (x_q (..., K) int8, x_scale (...) float32); see the module docstring.

    block_k forces a K tile (a power of two >= 16); rows longer than it take the two-read path.
    Arguments are checked by the op layer (slimrt.ops); this launcher trusts them.
    """
    check_device("quantize_per_token", x)
    x2 = rows(x)  # (M, K)
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q.reshape(x.shape), scale.reshape(x.shape[:-1])
    if k == 0:
        return q.reshape(x.shape), scale.zero_().reshape(x.shape[:-1])
    if block_k is None:
        block_k = triton.next_power_of_2(k) if k <= MAX_ONE_PASS_K else 4096
    block_k = max(16, block_k)
    one_pass = block_k >= k
    # About 4K elements per program: many rows per program for short rows, one for long ones.
    block_m = max(1, min(16 if INTERPRET else 64, 4096 // block_k))
    block_m = min(block_m, triton.next_power_of_2(m))
    grid = (triton.cdiv(m, block_m),)
    _quantize_per_token_kernel[grid](
        x2, q, scale, m, k, x2.stride(0), x2.stride(1),
        BLOCK_M=block_m, BLOCK_K=block_k, ONE_PASS=one_pass, num_warps=4 if block_k * block_m <= 4096 else 8,
    )
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])
