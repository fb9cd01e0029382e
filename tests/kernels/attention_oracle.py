"""Dense oracle for block-sparse attention tests: the contract's token rule, random block layouts,
the dense allowed-pairs mask and an fp64 softmax over it (shared by the interpreter and GPU tests).
Written from the contract in kernels/block_sparse_attention.py; once slimrt.attention is merged,
its BlockMask.to_dense is the same mask."""

import torch


def token_rule(lq: int, lk: int, causal: bool, window: int, num_global: int) -> torch.Tensor:
    p = torch.arange(lq).unsqueeze(1) + (lk - lq)  # (Lq, 1) query positions, aligned to the end
    j = torch.arange(lk).unsqueeze(0)
    ok = torch.ones((lq, lk), dtype=torch.bool)
    if window > 0:
        ok = ((p - j).abs() < window) | (j < num_global) | (p < num_global)
    if causal:
        ok = ok & (j <= p)
    return ok


def random_layout(bm: int, hm: int, lq: int, lk: int, bs: int, density: float, gen: torch.Generator,
                  empty_qblock: int | None = None, keep_diagonal: bool = False):
    """Random sorted block lists -> (kv_num_blocks (bm, hm, nQB), kv_indices (bm, hm, nQB, maxKB), blocks bool)."""
    nqb, nkb = -(-lq // bs), -(-lk // bs)
    blocks = torch.rand((bm, hm, nqb, nkb), generator=gen) < density
    if keep_diagonal:  # the block holding each query's own position (Lq == Lk): no empty causal row
        diag = torch.arange(min(nqb, nkb))
        blocks[:, :, diag, diag] = True
    if empty_qblock is not None:
        blocks[:, :, empty_qblock] = False
    counts = blocks.sum(-1).to(torch.int32)
    max_kb = max(1, int(counts.max()))
    order = torch.sort(torch.where(blocks, torch.arange(nkb), nkb), dim=-1).values[..., :max_kb]
    idx = torch.where(order < nkb, order, torch.full_like(order, 123456)).to(torch.int32)  # junk padding
    return counts.contiguous(), idx.contiguous(), blocks


def dense_allowed(blocks, bs, lq, lk, causal, window, num_global, token_mask):
    """-> bool (B'|1, H'|1, Lq, Lk): listed blocks AND the token rule AND the token mask."""
    dense = blocks.repeat_interleave(bs, dim=2)[:, :, :lq].repeat_interleave(bs, dim=3)[..., :lk]
    dense = dense & token_rule(lq, lk, causal, window, num_global)
    return dense if token_mask is None else dense & token_mask


def oracle(q, k, v, allowed, scale):
    """fp64 softmax attention over the allowed pairs; rows with none are zeros. GQA by head repeat."""
    group = q.shape[1] // k.shape[1]
    kf = k.double().repeat_interleave(group, dim=1)
    vf = v.double().repeat_interleave(group, dim=1)
    s = (q.double() @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    return (p @ vf) / torch.where(den > 0, den, torch.ones_like(den))
