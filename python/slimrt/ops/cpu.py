"""CPU kernels: the native C++ extension registered for the CPU dispatch key.

Tensors cross into C++ as pointers plus sizes and strides; dtypes, devices and shapes are checked
here and in the reference checks first, so C++ only sees well-formed calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slimrt import _native
from slimrt.ops import _check, reference

_DT = {torch.float32: 0, torch.bfloat16: 1}
_OUT_DT = {torch.float32: 0, torch.bfloat16: 1, torch.int32: 2}


def _rows(x: Tensor) -> Tensor:
    """(..., K) -> (M, K) with unit stride in K (a view where possible, a copy otherwise)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[1] > 1 and x2.stride(1) != 1 or x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]:
        x2 = x2.contiguous()
    return x2


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    _check.dtype("quantize_per_token", "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim("quantize_per_token", "x", x, 1)
    x2 = _rows(x)
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int8)
    s = torch.empty((m,), dtype=torch.float32)
    if m and k:
        _native.load().quantize_per_token(x2.data_ptr(), _DT[x.dtype], m, k, x2.stride(0) if m > 1 else k,
                                          q.data_ptr(), s.data_ptr(), torch.get_num_threads())
    elif m:
        s.zero_()
    return q.reshape(x.shape), s.reshape(x.shape[:-1])


def int8_gemm(a: Tensor, b: Tensor, a_scale: Tensor | None, b_scale: Tensor | None,
              out_dtype: torch.dtype) -> Tensor:
    reference._check_gemm(a, b, a_scale, b_scale, out_dtype)
    m, k = a.shape
    n = b.shape[0]
    out = torch.empty((m, n), dtype=out_dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    a2, b2 = _rows(a), _rows(b)
    a_scale = None if a_scale is None else a_scale.contiguous()
    b_scale = None if b_scale is None else b_scale.contiguous()
    _native.load().int8_gemm(a2.data_ptr(), a2.stride(0) if m > 1 else k, b2.data_ptr(), b2.stride(0) if n > 1 else k,
                             _ptr(a_scale), _ptr(b_scale), 0, out.data_ptr(), _OUT_DT[out_dtype], n, m, n, k,
                             torch.get_num_threads())
    return out


def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, w_packed: Tensor | None) -> Tensor:
    reference._check_linear("int8_linear", x, w_q, w_scale, bias)
    lead, k = x.shape[:-1], x.shape[-1]
    n = w_q.shape[0]
    x_q, x_s = quantize_per_token(x.reshape(-1, k))
    m = x_q.shape[0]
    out = torch.empty((m, n), dtype=x.dtype)
    if m and n:
        if k == 0:
            out.copy_(bias.expand(m, n) if bias is not None else torch.zeros(m, n))
        else:
            w2 = _rows(w_q)
            b32 = None if bias is None else bias.float().contiguous()
            _native.load().int8_gemm(x_q.data_ptr(), k, w2.data_ptr(), w2.stride(0) if n > 1 else k, x_s.data_ptr(),
                                     w_scale.contiguous().data_ptr(), _ptr(b32), out.data_ptr(), _OUT_DT[x.dtype], n,
                                     m, n, k, torch.get_num_threads())
    return out.reshape(*lead, n)


# ---- block-sparse attention (issue 6) ----
import math  # noqa: E402  (kept in this section so the shared file's header stays untouched)


def _unit_last(t: Tensor) -> Tensor:
    """Unit stride in the last dim (a view when it already has one); other strides are passed on."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, kv_num_blocks: Tensor, kv_indices: Tensor,
                           block_size: int, causal: bool, window: int, num_global: int, token_mask: Tensor | None,
                           scale: float | None) -> Tensor:
    # The layout contents (counts, index range, order) are checked in C++, where it is cheap.
    reference._check_attention(q, k, v, kv_num_blocks, kv_indices, block_size, causal, window, num_global,
                               token_mask, scale, check_layout=False)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    out = torch.empty((b, hq, lq, d), dtype=q.dtype)
    if out.numel() == 0:
        return out
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    bm, hm, nqb, max_kb = kv_indices.shape
    # Mask arrays made contiguous; a broadcast (size-1) batch or head dim gets stride 0. Computed
    # by hand rather than with expand(): this runs once per decode step.
    kvn, kvi = kv_num_blocks.contiguous(), kv_indices.contiguous()
    kvn_st = [hm * nqb if bm > 1 else 0, nqb if hm > 1 else 0, 1]
    kvi_st = [hm * nqb * max_kb if bm > 1 else 0, nqb * max_kb if hm > 1 else 0, max_kb]
    tok, tok_st = None, [0, 0, 0]
    if token_mask is not None:
        tok = token_mask.contiguous()
        tb, th = tok.shape[0], tok.shape[1]
        tok_st = [th * lq * lk if tb > 1 else 0, lq * lk if th > 1 else 0, lk]
    _native.load().block_sparse_attention(
        q.data_ptr(), list(q.stride()[:3]), k.data_ptr(), list(k.stride()[:3]), v.data_ptr(), list(v.stride()[:3]),
        out.data_ptr(), _DT[q.dtype], [b, hq, hkv, lq, lk, d], kvn.data_ptr(), kvn_st, kvi.data_ptr(), kvi_st,
        max_kb, block_size, causal, window, num_global, _ptr(tok), tok_st, float(scale), torch.get_num_threads())
    return out


def register(lib: torch.library.Library) -> None:
    """Registers the native kernels for the CPU dispatch key."""
    lib.impl("quantize_per_token", quantize_per_token, "CPU")
    lib.impl("int8_gemm", int8_gemm, "CPU")
    lib.impl("int8_linear", int8_linear, "CPU")
    lib.impl("block_sparse_attention", block_sparse_attention, "CPU")  # block-sparse attention
