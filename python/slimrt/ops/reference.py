"""Plain PyTorch reference for every slimrt op.

This file is the spec: each docstring gives shapes, dtypes and the formula; each native or Triton
kernel is tested against the function of the same name here, and it is the kernel that runs on any
device without one of its own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slimrt.ops import _check

INT8_MAX = 127


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of each row of the last dim.

    x (..., K) float32|bfloat16 -> x_q (..., K) int8, x_scale (...) float32, with
    amax = max|x| over the row (in fp32), x_scale = amax / 127, x_q = round_half_even(x * (127 / amax)).
    Bit-exact fp32 op order: 127 / amax is formed as torch forms ``int / tensor``, i.e.
    (1 / amax) * 127 (reciprocal, then multiply), which can differ from a true division in the last bit.
    A row of zeros gives x_scale 0 and x_q 0. A row holding NaN or +-Inf gives x_scale NaN and
    x_q 0, so the NaN reaches the output instead of an undefined float-to-int cast. A row whose amax
    is so small that 127 / amax overflows (below ~3.7e-37) gives +-127 for its nonzero values and 0
    for its zeros.
    """
    op = "quantize_per_token"
    _check.dtype(op, "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim(op, "x", x, 1)
    xf = x.float()
    if x.shape[-1] == 0:
        return torch.zeros(x.shape, dtype=torch.int8, device=x.device), torch.zeros(
            x.shape[:-1], dtype=torch.float32, device=x.device
        )
    amax = xf.abs().amax(dim=-1)  # NaN propagates through amax
    finite = torch.isfinite(amax)
    nonzero = amax > 0
    ok = finite & nonzero
    inv = torch.where(ok, INT8_MAX / torch.where(ok, amax, torch.ones_like(amax)), torch.zeros_like(amax))
    q = torch.round(xf * inv.unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX)
    # amax below 127 / FLT_MAX (~3.7e-37) makes inv +inf: x * inv is then +-inf (-> +-127) or, for
    # x == 0, NaN; a zero stays 0, so no NaN reaches the integer cast.
    q = torch.where(ok.unsqueeze(-1) & (xf != 0), q, torch.zeros_like(q)).to(torch.int8)
    scale = torch.where(finite, amax / INT8_MAX, torch.full_like(amax, float("nan")))
    return q, scale


def quantize_per_channel(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of each output row of a 2-D weight.

    w (N, K) float -> w_q (N, K) int8, w_scale (N,) float32 with w_scale = amax / 127.
    An all-zero row gets w_scale 1.0 (any positive value reconstructs zeros; a stored scale is
    never zero). NaN/Inf in w is an error naming the row, since weights are never expected to hold them.
    """
    op = "quantize_per_channel"
    _check.dtype(op, "w", w, (torch.float32, torch.bfloat16, torch.float16, torch.float64))
    _check.ndim(op, "w", w, 2)
    wf = w.float()
    bad = ~torch.isfinite(wf).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{op}: w has NaN or Inf in rows {rows}")
    amax = wf.abs().amax(dim=1) if w.shape[1] > 0 else torch.zeros(w.shape[0], device=w.device)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(wf / scale.unsqueeze(1)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def _check_gemm(a: Tensor, b: Tensor, a_scale: Tensor | None, b_scale: Tensor | None, out_dtype: torch.dtype) -> None:
    op = "int8_gemm"
    _check.dtype(op, "a", a, (torch.int8,))
    _check.dtype(op, "b", b, (torch.int8,))
    _check.ndim(op, "a", a, 2)
    _check.ndim(op, "b", b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"int8_gemm: a is (M, K) = {tuple(a.shape)} and b is (N, K) = {tuple(b.shape)}: K differs")
    if out_dtype == torch.int32:
        if a_scale is not None or b_scale is not None:
            raise ValueError("int8_gemm: out_dtype=int32 returns the raw accumulator; pass no scales")
    else:
        if out_dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"int8_gemm: out_dtype {out_dtype} is not supported; expected float32, bfloat16 or int32")
        if a_scale is None or b_scale is None:
            raise ValueError("int8_gemm: a_scale and b_scale are required for a float output")
        _check.dtype(op, "a_scale", a_scale, (torch.float32,))
        _check.dtype(op, "b_scale", b_scale, (torch.float32,))
        _check.shape(op, "a_scale", a_scale, (a.shape[0],))
        _check.shape(op, "b_scale", b_scale, (b.shape[0],))
    _check.same_device(op, a=a, b=b, a_scale=a_scale, b_scale=b_scale)


def int8_gemm(
    a: Tensor, b: Tensor, a_scale: Tensor | None, b_scale: Tensor | None, out_dtype: torch.dtype = torch.float32
) -> Tensor:
    """out (M, N) = (a @ b.T, exact int32) * a_scale[:, None] * b_scale[None, :].

    a (M, K) int8, b (N, K) int8 (nn.Linear layout), a_scale (M,) and b_scale (N,) float32.
    out_dtype float32|bfloat16, or int32 for the raw accumulator (then both scales must be None).
    The product is formed in fp32 as (acc * a_scale) * b_scale.
    """
    _check_gemm(a, b, a_scale, b_scale, out_dtype)
    # float64 holds every partial sum exactly (|acc| <= K * 2^14 < 2^53 for any K below 2^39) and,
    # unlike an int64 matmul, exists on every device (CUDA has no integer matmul).
    acc = (a.to(torch.float64) @ b.to(torch.float64).T).to(torch.int32)
    if out_dtype == torch.int32:
        return acc
    return (acc.float() * a_scale.unsqueeze(1) * b_scale.unsqueeze(0)).to(out_dtype)


def _check_linear(op: str, x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> None:
    _check.dtype(op, "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim(op, "x", x, 1)
    _check.dtype(op, "w_q", w_q, (torch.int8,))
    _check.ndim(op, "w_q", w_q, 2)
    _check.dtype(op, "w_scale", w_scale, (torch.float32,))
    _check.shape(op, "w_scale", w_scale, (w_q.shape[0],))
    if x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[-1]} features in its last dim but w_q is (N, K) = {tuple(w_q.shape)}")
    _check.bias(op, bias, w_q.shape[0])
    _check.same_device(op, x=x, w_q=w_q, w_scale=w_scale, bias=bias)
    _check.no_grad_needed(op, x=x, bias=bias)


# Epilogue activations of int8_linear, by name: applied to the fp32 result (after the bias, before
# the cast to x.dtype). "gelu" is the exact (erf) GELU, "gelu_tanh" the tanh approximation (GPT-2's
# gelu_new), "relu" max(x, 0), "silu" x * sigmoid(x).
ACTIVATIONS = {
    "none": None,
    "gelu": lambda y: torch.nn.functional.gelu(y),
    "gelu_tanh": lambda y: torch.nn.functional.gelu(y, approximate="tanh"),
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
}


def check_activation(op: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation={activation!r} is not one of {', '.join(map(repr, ACTIVATIONS))}")
    return None


def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                activation: str = "none") -> Tensor:
    """W8A8 linear with dynamic per-token activation quantization.

    x (..., K) float32|bfloat16, w_q (N, K) int8, w_scale (N,) float32, bias (N,) or None
    -> y (..., N) in x.dtype:  x_q, x_s = quantize_per_token(x);
    y = act(int8_gemm(x_q, w_q, x_s, w_scale) + bias), bias and activation (ACTIVATIONS) in fp32
    before the cast.
    """
    _check_linear("int8_linear", x, w_q, w_scale, bias)
    check_activation("int8_linear", activation)
    lead, k = x.shape[:-1], x.shape[-1]
    x_q, x_s = quantize_per_token(x.reshape(math.prod(lead), k))  # (M, K); -1 is ambiguous when K == 0
    y = int8_gemm(x_q, w_q, x_s, w_scale, torch.float32)
    if bias is not None:
        y = y + bias.float()
    if ACTIVATIONS[activation] is not None:
        y = ACTIVATIONS[activation](y)
    return y.to(x.dtype).reshape(*lead, w_q.shape[0])


def int8_weight_only_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """Weight-only int8 linear (float activations): the small-M decode path.

    x (..., K) float32|bfloat16, w_q (N, K) int8, w_scale (N,) float32 -> y (..., N) in x.dtype:
    y = (x @ w_q.T) * w_scale + bias, accumulated in fp32; the weight is dequantized on the fly.
    """
    _check_linear("int8_weight_only_linear", x, w_q, w_scale, bias)
    y = (x.float() @ w_q.float().T) * w_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def lowrank_linear(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Factorized linear: y = (x @ v.T) @ u.T + bias.

    x (..., K) float32|bfloat16, v (R, K), u (N, R) of x's dtype, bias (N,) or None -> y (..., N) in
    x.dtype. The (M, R) intermediate and the accumulation are fp32; only y is rounded to x.dtype.
    """
    _check_lowrank(x, u, v, bias)
    h = x.float() @ v.float().T  # (..., R)
    y = h @ u.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _check_lowrank(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None) -> None:
    op = "lowrank_linear"
    _check.dtype(op, "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim(op, "x", x, 1)
    _check.dtype(op, "u", u, (x.dtype,))
    _check.dtype(op, "v", v, (x.dtype,))
    _check.ndim(op, "u", u, 2)
    _check.ndim(op, "v", v, 2)
    if v.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: v is (R, K) = {tuple(v.shape)} but x has K = {x.shape[-1]}")
    if u.shape[1] != v.shape[0]:
        raise ValueError(f"{op}: u is (N, R) = {tuple(u.shape)} but v has R = {v.shape[0]}")
    _check.bias(op, bias, u.shape[0])
    _check.same_device(op, x=x, u=u, v=v, bias=bias)
    _check.no_grad_needed(op, x=x, u=u, v=v, bias=bias)


# ---- block-sparse attention ----

import math  # noqa: E402  (kept in this section so the shared file's header stays untouched)

MAX_HEAD_DIM = 256


def _check_qkv(op: str, q: Tensor, k: Tensor, v: Tensor, varlen: bool) -> None:
    """dtype, rank and shape checks of the attention operands: q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D),
    or with varlen q (T, Hq, D), k and v (T, Hkv, D); one float dtype (varlen: float16 too),
    Hq % Hkv == 0, D <= 256."""
    _check.dtype(op, "q", q, _check.FLOAT_ACT_DTYPES + ((torch.float16,) if varlen else ()))
    _check.dtype(op, "k", k, (q.dtype,))
    _check.dtype(op, "v", v, (q.dtype,))
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check.ndim(op, name, t, 3 if varlen else 4)
    lead, hq, d = q.shape[0], q.shape[1], q.shape[-1]
    if k.shape[0] != lead or k.shape[-1] != d:
        want = ("(T, Hq, D)", "k (T, Hkv, D) with the same T and D") if varlen else \
            ("(B, Hq, Lq, D)", "k (B, Hkv, Lk, D) with the same B and D")
        raise ValueError(f"{op}: k has shape {tuple(k.shape)} but q is {want[0]} = {tuple(q.shape)}; expected {want[1]}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{op}: v has shape {tuple(v.shape)}, expected k's shape {tuple(k.shape)}")
    hkv = k.shape[1]
    if hkv == 0 and hq != 0 or hkv and hq % hkv:
        raise ValueError(f"{op}: q has {hq} heads, which is not a multiple of k's {hkv} heads (grouped-query attention)")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dim D = {d} is larger than the supported {MAX_HEAD_DIM}")


def _check_attention(q: Tensor, k: Tensor, v: Tensor, kv_num_blocks: Tensor, kv_indices: Tensor, block_size: int,
                     causal: bool, window: int, num_global: int, token_mask: Tensor | None,
                     scale: float | None, check_layout: bool = True) -> None:
    """Argument checks shared by the reference and the native kernel (the layout contents are
    checked here only when check_layout, since the native entry checks them in C++)."""
    op = "block_sparse_attention"
    _check_qkv(op, q, k, v, varlen=False)
    b, hq, lq, d = q.shape
    for name, val in (("block_size", block_size), ("window", window), ("num_global", num_global)):
        if val < (1 if name == "block_size" else 0):
            raise ValueError(f"{op}: {name} = {val} is out of range")
    _check.dtype(op, "kv_num_blocks", kv_num_blocks, (torch.int32,))
    _check.dtype(op, "kv_indices", kv_indices, (torch.int32,))
    _check.ndim(op, "kv_num_blocks", kv_num_blocks, 3)
    _check.ndim(op, "kv_indices", kv_indices, 4)
    bm, hm, nqb = kv_num_blocks.shape
    if tuple(kv_indices.shape[:3]) != (bm, hm, nqb):
        raise ValueError(f"{op}: kv_indices has shape {tuple(kv_indices.shape)} but kv_num_blocks has shape "
                         f"{tuple(kv_num_blocks.shape)}; their first three dims must match")
    if bm not in (1, b):
        raise ValueError(f"{op}: the mask has {bm} batch entries, expected 1 or B = {b}")
    if hm not in (1, hq):
        raise ValueError(f"{op}: the mask has {hm} head entries, expected 1 or Hq = {hq}")
    if nqb != -(-lq // block_size):
        raise ValueError(f"{op}: the mask has {nqb} query blocks but Lq = {lq} with block_size {block_size} "
                         f"needs {-(-lq // block_size)}")
    if token_mask is not None:
        _check.dtype(op, "token_mask", token_mask, (torch.bool,))
        _check.ndim(op, "token_mask", token_mask, 4)
        tb, th, tq, tk = token_mask.shape
        if tb not in (1, b) or th not in (1, hq) or (tq, tk) != (lq, k.shape[2]):
            raise ValueError(f"{op}: token_mask has shape {tuple(token_mask.shape)}, expected (1|B, 1|Hq, Lq, Lk) = "
                             f"(1|{b}, 1|{hq}, {lq}, {k.shape[2]})")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")
    _check.same_device(op, q=q, k=k, v=v, kv_num_blocks=kv_num_blocks, kv_indices=kv_indices, token_mask=token_mask)
    if check_layout:
        from slimrt.attention import validate_layout

        validate_layout(kv_num_blocks, kv_indices, -(-k.shape[2] // block_size), op)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, kv_num_blocks: Tensor, kv_indices: Tensor,
                           block_size: int, causal: bool = False, window: int = 0, num_global: int = 0,
                           token_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Softmax attention restricted to the token pairs a block mask allows.

    q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) float32|bfloat16 (one dtype), Hq % Hkv == 0: query
    head h reads key/value head h // (Hq / Hkv). The mask is a slimrt.BlockMask's fields (see
    slimrt.attention): allowed = dense_from_fields(...) (B'|1, H'|1, Lq, Lk). With s = scale * q k^T
    (scale defaults to 1/sqrt(D)), out[i] = sum_j softmax_j(s[i, j] over allowed j) v[j], computed in
    fp32 and returned in q.dtype; a row with no allowed key is zeros.
    """
    from slimrt.attention import dense_from_fields

    _check_attention(q, k, v, kv_num_blocks, kv_indices, block_size, causal, window, num_global, token_mask, scale)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d else 1.0
    allowed = dense_from_fields(kv_num_blocks, kv_indices, block_size, causal, window, num_global, token_mask,
                                lq, lk)  # (B'|1, H'|1, Lq, Lk)
    group = hq // hkv if hkv else 1
    kf = k.float().repeat_interleave(group, dim=1)  # (B, Hq, Lk, D)
    vf = v.float().repeat_interleave(group, dim=1)
    s = (q.float() @ kf.transpose(-1, -2)) * scale  # (B, Hq, Lq, Lk)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True) if lk else s.new_zeros((b, hq, lq, 1))
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)  # empty rows: exp(-inf) = 0, not NaN
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    out = (p @ vf) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.to(q.dtype)


# ---- varlen attention (packed sequences without padding) ----


def _check_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, scale: float | None) -> list[int]:
    """Checks shared by the reference and the native kernel; returns cu_seqlens as a list."""
    op = "varlen_attention"
    _check_qkv(op, q, k, v, varlen=True)
    t = q.shape[0]
    _check.dtype(op, "cu_seqlens", cu_seqlens, (torch.int64,))
    _check.ndim(op, "cu_seqlens", cu_seqlens, 1)
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")
    # cu_seqlens on q's device too: the native kernel reads it through its data pointer.
    _check.same_device(op, q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    cu = cu_seqlens.tolist()
    if not cu or cu[0] != 0 or cu[-1] != t or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"{op}: cu_seqlens must start at 0, never decrease and end at T = {t} "
                         f"(the packed token count); got {cu[:8]}{' ...' if len(cu) > 8 else ''}")
    return cu


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool = False,
                     scale: float | None = None) -> Tensor:
    """Attention within each of several sequences packed back to back, with no padding.

    q (T, Hq, D), k and v (T, Hkv, D) float32|bfloat16|float16, Hq % Hkv == 0 (query head h reads kv head
    h // (Hq / Hkv)); cu_seqlens (B + 1,) int64 cumulative lengths: sequence b is tokens
    [cu[b], cu[b+1]). Query i of a sequence attends to every key of its own sequence (causal: keys
    up to i), softmax(scale * q k^T) v with scale 1/sqrt(D) by default, in fp32; out (T, Hq, D) in q.dtype.
    """
    cu = _check_varlen(q, k, v, cu_seqlens, scale)
    t, hq, d = q.shape
    hkv = k.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d else 1.0
    group = hq // hkv if hkv else 1
    out = q.new_zeros(q.shape)
    for s0, s1 in zip(cu, cu[1:]):
        if s1 == s0 or hq == 0:
            continue
        qs = q[s0:s1].float().transpose(0, 1)  # (Hq, L, D)
        ks = k[s0:s1].float().transpose(0, 1).repeat_interleave(group, dim=0)
        vs = v[s0:s1].float().transpose(0, 1).repeat_interleave(group, dim=0)
        s = (qs @ ks.transpose(-1, -2)) * scale  # (Hq, L, L)
        if causal:
            s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
        out[s0:s1] = (torch.softmax(s, dim=-1) @ vs).transpose(0, 1).to(q.dtype)
    return out
