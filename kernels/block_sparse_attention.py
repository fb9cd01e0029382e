"""block_sparse_attention: FlashAttention-style forward over the listed key blocks only.

Contract (slimrt.BlockMask, the op slimrt::block_sparse_attention): q (B, Hq, Lq, D), k and v
(B, Hkv, Lk, D) of one float dtype, Hq % Hkv == 0 (query head h reads kv head h // (Hq / Hkv)).
kv_num_blocks int32 (B'|1, H'|1, nQB) and kv_indices int32 (B'|1, H'|1, nQB, maxKB) list, per query
block of block_size queries, the sorted key blocks to compute; inside them a token rule with query i
at position p = Lk - Lq + i:
    allowed(p, j) = (not causal or j <= p) and (window == 0 or |p - j| < window or j < G or p < G)
and an optional token_mask bool (B'|1, H'|1, Lq, Lk). out[i] = softmax over allowed j of
scale * q k^T, times v; fp32 statistics, output in q.dtype; a row with no allowed key is zeros.

One program owns BLOCK_M queries of one query block and one (batch, query head); it walks the key
blocks listed for its query block in BLOCK_N sub-tiles with the online softmax (running max m,
denominator l, accumulator acc), so memory traffic and flops scale with the listed blocks only.
Split-K (decode, Lq = 1, where B * Hq programs cannot fill the GPU): the listed blocks are cut into
NUM_SPLITS ranges, each program writes its unnormalized (acc, m, l) and a second kernel merges them.
Napkin math: flops 4 * B * Hq * Lq * D * (listed keys per query); at 10% density a 16K-token
prefill does ~10x less work than dense attention, minus the partial-block waste at block edges.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cast_out, check_device, dot_precision, mma

LOG2E = 1.4426950408889634


@triton.jit
def _block_sparse_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, counts_ptr, idx_ptr, tmask_ptr, part_ptr, ml_ptr,
    Hq, Lq, Lk, D, group, block_size, max_kb, qk_scale, window, num_global, blocks_per_split,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    sc_b, sc_h, sc_q, si_b, si_h, si_q, st_b, st_h, st_q,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_TOKEN_MASK: tl.constexpr, NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SUB_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)  # query block * SUB_M + sub tile
    pid_bh = tl.program_id(1)  # b * Hq + h
    split = tl.program_id(2)
    qb = pid_q // SUB_M
    b = (pid_bh // Hq).to(tl.int64)  # 64-bit: batch/head offsets of q, k, v and the token mask pass 2^31
    h = (pid_bh % Hq).to(tl.int64)
    hk = h // group

    offs_m = qb * block_size + (pid_q % SUB_M) * BLOCK_M + tl.arange(0, BLOCK_M)  # query index i
    mask_m = (offs_m < Lq) & (offs_m < (qb + 1) * block_size)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    pos = Lk - Lq + offs_m  # query positions, aligned to the end of the keys

    q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None].to(tl.int64) * sq_l + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    k_base = k_ptr + b * sk_b + hk * sk_h
    v_base = v_ptr + b * sv_b + hk * sv_h

    # Mask strides are 0 along broadcast (size-1) batch/head dims.
    # Clamped count and the kb range guard below keep a bad layout from reading out of bounds on a GPU
    # (the op checks layouts on CPU; on CUDA a host-side check would cost a sync per decode step).
    count = tl.minimum(tl.maximum(tl.load(counts_ptr + b * sc_b + h * sc_h + qb * sc_q), 0), max_kb)
    idx_base = idx_ptr + b * si_b + h * si_h + qb * si_q
    t_start = split * blocks_per_split
    t_end = tl.minimum(count, t_start + blocks_per_split)
    t_end = tl.where(tl.max(mask_m.to(tl.int32), axis=0) > 0, t_end, t_start)  # no query row here: no work

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of s * log2(e)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t in range(t_start, t_end):
        kb = tl.load(idx_base + t)
        for sub in range(0, block_size, BLOCK_N):
            offs_n = kb * block_size + sub + tl.arange(0, BLOCK_N)  # key index j
            mask_n = (sub + tl.arange(0, BLOCK_N) < block_size) & (offs_n < Lk) & (offs_n >= 0)  # kb < 0: none
            kt = tl.load(k_base + offs_n[None, :].to(tl.int64) * sk_l + offs_d[:, None],
                         mask=mask_d[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_D, BLOCK_N)
            s = tl.dot(mma(q), mma(kt), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units

            allowed = mask_m[:, None] & mask_n[None, :]
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= pos[:, None])
            if HAS_WINDOW:
                diff = pos[:, None] - offs_n[None, :]
                near = (diff < window) & (diff > -window)
                allowed = allowed & (near | (offs_n[None, :] < num_global) | (pos[:, None] < num_global))
            if HAS_TOKEN_MASK:
                tm = tl.load(tmask_ptr + b * st_b + h * st_h + offs_m[:, None].to(tl.int64) * st_q + offs_n[None, :],
                             mask=allowed, other=0)
                allowed = allowed & (tm != 0)
            s = tl.where(allowed, s, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet: no NaN
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            vt = tl.load(v_base + offs_n[:, None].to(tl.int64) * sv_l + offs_d[None, :],
                         mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            acc = acc * alpha[:, None] + tl.dot(mma(cast_out(p, vt.dtype)), mma(vt), input_precision=DOT_PRECISION)
            m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # nothing allowed: acc = 0 -> zeros
        tl.store(out_ptr + b.to(tl.int64) * so_b + h * so_h + offs_m[:, None].to(tl.int64) * so_l + offs_d[None, :],
                 cast_out(out, out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    else:
        # Partials: acc (S, B*Hq, Lq, BLOCK_D) and (m, l) (S, B*Hq, Lq, 2), fp32, contiguous.
        row = (split * tl.num_programs(1) + pid_bh).to(tl.int64) * Lq + offs_m  # offs_m: queries of this tile
        tl.store(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :], acc, mask=mask_m[:, None])
        tl.store(ml_ptr + row * 2, m_i, mask=mask_m)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=mask_m)


@triton.jit
def _block_sparse_attention_merge_kernel(
    part_ptr, ml_ptr, out_ptr, Hq, Lq, D, rows_per_split, so_b, so_h, so_l,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merges the split partials of one query row: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s."""
    row = tl.program_id(0).to(tl.int64)  # (b * Hq + h) * Lq + i
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < NUM_SPLITS
    srow = offs_s.to(tl.int64) * rows_per_split + row
    m = tl.load(ml_ptr + srow * 2, mask=mask_s, other=float("-inf"))
    l_s = tl.load(ml_ptr + srow * 2 + 1, mask=mask_s, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # splits that saw nothing: weight 0
    acc = tl.load(part_ptr + srow[:, None] * BLOCK_D + offs_d[None, :], mask=mask_s[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    den = tl.sum(l_s * w, axis=0)
    out = num / tl.where(den > 0.0, den, 1.0)
    bh = row // Lq
    i = row % Lq
    out_row = out_ptr + (bh // Hq) * so_b + (bh % Hq) * so_h + i * so_l
    tl.store(out_row + offs_d, cast_out(out, out_ptr.dtype.element_ty), mask=offs_d < D)


def _mask_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides of a (B'|1, H'|1, X, ...) mask tensor with 0 on its broadcast dims."""
    return (t.stride(0) if t.shape[0] > 1 else 0, t.stride(1) if t.shape[1] > 1 else 0, t.stride(2))


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_num_blocks: torch.Tensor,
                           kv_indices: torch.Tensor, block_size: int, causal: bool = False, window: int = 0,
                           num_global: int = 0, token_mask: torch.Tensor | None = None, scale: float | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """Softmax attention over the pairs the block mask allows; see the module docstring.

    num_splits forces the split-K factor (default: split only when Lq == 1 and B * Hq programs are too few).
    Arguments are checked by the op layer (the reference's checks); this launcher trusts them.
    """
    check_device("block_sparse_attention", q, k, v, kv_num_blocks, kv_indices, token_mask)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    if lk == 0 or kv_indices.shape[3] == 0:
        return out.zero_()
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    # Unit stride along D for the tile loads.
    q, k, v = (t if t.stride(3) == 1 else t.contiguous() for t in (q, k, v))
    nqb = kv_num_blocks.shape[2]
    max_kb = kv_indices.shape[3]

    block_d = max(16, triton.next_power_of_2(d))
    pow_bs = max(16, triton.next_power_of_2(block_size))
    # Query tile: the whole query block up to 64/128 rows, but no taller than Lq (decode: 16 rows, the
    # smallest MMA, not a 128-row tile of which one row is real).
    pow_q = max(16, triton.next_power_of_2(min(block_size, lq)))
    if INTERPRET:
        block_m, block_n, warps = min(pow_q, 16), min(pow_bs, 16), 4
    else:
        block_m = min(pow_q, 128 if block_d <= 64 else 64)
        block_n = min(pow_bs, 64 if block_d <= 128 else 32)
        warps = 4 if block_m * block_d <= 64 * 64 else 8
    sub_m = triton.cdiv(min(block_size, lq), block_m)  # tiles per query block (none past Lq when Lq < block)
    if num_splits is None:
        programs = nqb * sub_m * b * hq
        num_splits = 1 if lq > 1 else max(1, min(max_kb, triton.cdiv(2 * _num_sms(q.device), programs), 64))
    num_splits = max(1, min(num_splits, max_kb))
    per_split = triton.cdiv(max_kb, num_splits)
    num_splits = triton.cdiv(max_kb, per_split)  # no empty trailing split

    if num_splits > 1:
        part = torch.empty((num_splits, b * hq, lq, block_d), dtype=torch.float32, device=q.device)
        ml = torch.empty((num_splits, b * hq, lq, 2), dtype=torch.float32, device=q.device)
    else:
        part = ml = out  # unused
    tmask = token_mask.view(torch.uint8) if token_mask is not None else kv_num_blocks
    tm_strides = _mask_strides(tmask) if token_mask is not None else (0, 0, 0)
    _block_sparse_attention_kernel[(nqb * sub_m, b * hq, num_splits)](
        q, k, v, out, kv_num_blocks, kv_indices, tmask, part, ml,
        hq, lq, lk, d, hq // hkv, block_size, max_kb, scale * LOG2E, int(window), int(num_global), per_split,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        *_mask_strides(kv_num_blocks), *_mask_strides(kv_indices), *tm_strides,
        CAUSAL=bool(causal), HAS_WINDOW=window > 0, HAS_TOKEN_MASK=token_mask is not None, NUM_SPLITS=num_splits,
        DOT_PRECISION=dot_precision(q.dtype),
        SUB_M=sub_m, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
    )
    if num_splits > 1:
        _block_sparse_attention_merge_kernel[(b * hq * lq,)](
            part, ml, out, hq, lq, d, b * hq * lq, out.stride(0), out.stride(1), out.stride(2),
            NUM_SPLITS=num_splits, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d,
        )
    return out
