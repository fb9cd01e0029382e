"""CPU kernels: the native C++ extension registered for the CPU dispatch key.

Tensors cross into C++ as pointers plus sizes and strides; dtypes, devices and shapes are checked
here and in the reference checks first, so C++ only sees well-formed calls.

The decode path (M = 1) is dominated by per-call overhead, not math, so the wrappers avoid
creating tensors they do not need: a contiguous operand is passed as is, and the checks are the
reference's (the same one-sentence errors) without extra copies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slimrt import _native
from slimrt.ops import _check, reference

_DT = {torch.float32: 0, torch.bfloat16: 1}
_OUT_DT = {torch.float32: 0, torch.bfloat16: 1, torch.int32: 2}


def _rows(x: Tensor) -> Tensor:
    """(..., K) -> (M, K) with unit stride in K (a view where possible, a copy otherwise)."""
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    if x2.shape[1] > 1 and x2.stride(1) != 1 or x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]:
        x2 = x2.contiguous()
    return x2


def _mat(t: Tensor) -> Tensor:
    """A 2-D (R, K) operand with unit stride in K; returned as is when it already has one (the common case)."""
    if (t.stride(1) == 1 or t.shape[1] <= 1) and (t.stride(0) >= t.shape[1] or t.shape[0] <= 1):
        return t
    return t.contiguous()


def _ld(t: Tensor) -> int:
    """Row stride of a 2-D operand from _mat/_rows (any value >= K works for a single row)."""
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _vec(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def packed_size(n: int, k: int) -> int:
    """Bytes of a packed (N, K) weight; mirrors int8_packed_size in csrc/int8_gemm/int8_gemm.h."""
    n_pad, k_pad = -(-n // 16) * 16, -(-k // 4) * 4
    return 64 + n_pad * k_pad + 4 * n_pad + 1024  # header, panels, comp, AMX slack


def _packed_ptr(op: str, w_packed: Tensor | None, n: int, k: int) -> int:
    """0 for "not packed" (None or empty); else checks the blob's dtype and size and returns its pointer."""
    if w_packed is None or w_packed.numel() == 0:
        return 0
    if w_packed.dtype != torch.int8 or w_packed.dim() != 1 or not w_packed.is_contiguous():
        raise TypeError(f"{op}: w_packed must be a contiguous 1-D int8 tensor from int8_pack_weight, "
                        f"got {w_packed.dtype} of shape {tuple(w_packed.shape)}")
    if w_packed.numel() != packed_size(n, k):
        raise ValueError(f"{op}: w_packed has {w_packed.numel()} bytes, expected {packed_size(n, k)} for a "
                         f"({n}, {k}) weight; repack it with int8_pack_weight(w_q)")
    if w_packed.device.type != "cpu":
        raise ValueError(f"{op}: w_packed is on {w_packed.device} but x is on cpu")
    return w_packed.data_ptr()


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    _check.dtype("quantize_per_token", "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim("quantize_per_token", "x", x, 1)
    x2 = _rows(x)
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int8)
    s = torch.empty((m,), dtype=torch.float32)
    if m and k:
        _native.load().quantize_per_token(x2.data_ptr(), _DT[x.dtype], m, k, _ld(x2), q.data_ptr(), s.data_ptr(),
                                          torch.get_num_threads())
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
    a2, b2 = _mat(a), _mat(b)
    a_scale = None if a_scale is None else _vec(a_scale)
    b_scale = None if b_scale is None else _vec(b_scale)
    _native.load().int8_gemm(a2.data_ptr(), _ld(a2), b2.data_ptr(), _ld(b2), 0, _ptr(a_scale), _ptr(b_scale), 0,
                             out.data_ptr(), _OUT_DT[out_dtype], n, m, n, k, torch.get_num_threads())
    return out


def int8_pack_weight(w_q: Tensor) -> Tensor:
    _check.dtype("int8_pack_weight", "w_q", w_q, (torch.int8,))
    _check.ndim("int8_pack_weight", "w_q", w_q, 2)
    n, k = w_q.shape
    packed = torch.empty((packed_size(n, k),), dtype=torch.int8)
    w2 = _mat(w_q)
    _native.load().int8_pack_weight(w2.data_ptr(), _ld(w2), n, k, packed.data_ptr(), torch.get_num_threads())
    return packed


def _bias32(bias: Tensor | None) -> Tensor | None:
    if bias is None:
        return None
    return _vec(bias) if bias.dtype == torch.float32 else bias.float().contiguous()


_ACT = (torch.float32, torch.bfloat16)


def _linear_args_ok(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, n: int, k: int) -> bool:
    """True for the common well-formed call (one pass of cheap attribute reads); any other call goes
    through reference._check_linear, which raises the one-sentence error or accepts it."""
    return (x.dtype in _ACT and w_q.dtype == torch.int8 and w_scale.dtype == torch.float32 and x.dim() >= 1
            and x.shape[-1] == k and w_scale.shape == (n,) and x.is_cpu and w_q.is_cpu and w_scale.is_cpu
            and not x.requires_grad
            and (bias is None or (bias.dtype == torch.float32 and bias.shape == (n,) and bias.is_cpu
                                  and not bias.requires_grad)))


_ACT_CODE = {"none": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "silu": 4}  # Act in csrc/int8_gemm/int8_gemm.h


def _linear(op: str, x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, w_packed: Tensor | None,
            weight_only: bool, activation: str = "none") -> Tensor:
    # Decode-path budget: every line here costs ~0.1-1 us, about what the kernel itself takes at M = 1.
    if w_q.dim() != 2 or not _linear_args_ok(x, w_q, w_scale, bias, w_q.shape[0], w_q.shape[1]):
        reference._check_linear(op, x, w_q, w_scale, bias)
    n, k = w_q.shape
    if w_packed is not None and w_packed.dtype == torch.int8 and w_packed.is_cpu and w_packed.is_contiguous() \
            and w_packed.numel() == packed_size(n, k):
        packed = w_packed.data_ptr()  # the common case, checked in one pass; C++ checks the header
    else:
        packed = _packed_ptr(op, w_packed, n, k)
    x2 = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), k)  # (M, K)
    if not x2.is_contiguous():
        x2 = _mat(x2)
    w2 = w_q if w_q.is_contiguous() else _mat(w_q)
    m = x2.shape[0]
    out = torch.empty((m, n), dtype=x.dtype)
    if m and n:
        b32 = _bias32(bias)
        ws = _vec(w_scale)  # bound to a name: a temporary copy must outlive the C call
        ext = _native.load()
        if weight_only:
            ext.int8_w8_linear(x2.data_ptr(), _DT[x.dtype], _ld(x2), w2.data_ptr(), _ld(w2), packed, ws.data_ptr(),
                               0 if b32 is None else b32.data_ptr(), out.data_ptr(), _OUT_DT[x.dtype], n, m, n, k,
                               torch.get_num_threads())
        else:
            ext.int8_w8a8_linear(x2.data_ptr(), _DT[x.dtype], _ld(x2), w2.data_ptr(), _ld(w2), packed, ws.data_ptr(),
                                 0 if b32 is None else b32.data_ptr(), out.data_ptr(), _OUT_DT[x.dtype], n, m, n, k,
                                 torch.get_num_threads(), _ACT_CODE[activation])
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, w_packed: Tensor | None,
                activation: str = "none") -> Tensor:
    if activation not in _ACT_CODE:
        reference.check_activation("int8_linear", activation)
    return _linear("int8_linear", x, w_q, w_scale, bias, w_packed, weight_only=False, activation=activation)


def int8_weight_only_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None,
                            w_packed: Tensor | None) -> Tensor:
    return _linear("int8_weight_only_linear", x, w_q, w_scale, bias, w_packed, weight_only=True)


# ---- w4 family ----
def w4_packed_size(n: int, k: int, group_size: int) -> int:
    """Bytes of a packed w4 weight; mirrors w4_packed_size in csrc/w4_linear/w4_linear.h."""
    ng = -(-k // group_size)
    return 64 + -(-n // 16) * (-(-48 * ng // 64) * 64 + ng * 8 * group_size)


def _fp16_bits(t: Tensor) -> Tensor:
    return _vec(t)  # float16 storage is the IEEE half bits the kernels read


def w4_pack_weight(w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, group_size: int, in_features: int) -> Tensor:
    from slimrt.ops.reference_w4 import check_w4

    check_w4("w4_pack_weight", torch.empty((1, in_features)), w_q4, w_scale, w_zero, None, group_size)
    n = w_q4.shape[0]
    packed = torch.empty((w4_packed_size(n, in_features, group_size),), dtype=torch.uint8)
    q4, sc = _vec(w_q4), _fp16_bits(w_scale)
    z = None if w_zero is None else _vec(w_zero)
    _native.load().w4_pack_weight(q4.data_ptr(), sc.data_ptr(), _ptr(z), n, in_features, group_size,
                                  packed.data_ptr(), torch.get_num_threads())
    return packed


def w4_linear(x: Tensor, w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, bias: Tensor | None,
              w_packed: Tensor | None, group_size: int) -> Tensor:
    k = x.shape[-1] if x.dim() else 0
    n = w_q4.shape[0] if w_q4.dim() == 2 else 0
    # The common well-formed call in one expression; anything else gets the reference's full checks.
    if not (x.dtype in _ACT and w_q4.dtype == torch.uint8 and w_scale.dtype == torch.float16 and w_q4.dim() == 2
            and group_size in (32, 64, 128) and w_q4.shape[1] * 2 == -(-k // group_size) * group_size
            and w_scale.shape == (n, -(-k // group_size)) and not x.requires_grad
            and (w_zero is None or (w_zero.dtype == torch.uint8 and w_zero.shape == w_scale.shape))
            and (bias is None or (bias.shape == (n,) and bias.dtype in _ACT and not bias.requires_grad))):
        from slimrt.ops.reference_w4 import check_w4

        check_w4("w4_linear", x, w_q4, w_scale, w_zero, bias, group_size)
    packed = 0
    if w_packed is not None and w_packed.numel():
        if w_packed.dtype != torch.uint8 or w_packed.dim() != 1 or not w_packed.is_contiguous() \
                or w_packed.numel() != w4_packed_size(n, k, group_size):
            raise ValueError(f"w4_linear: w_packed must be the contiguous uint8 blob w4_pack_weight makes "
                             f"({w4_packed_size(n, k, group_size)} bytes), got {w_packed.dtype} of shape "
                             f"{tuple(w_packed.shape)}")
        packed = w_packed.data_ptr()
    x2 = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), k)  # (M, K)
    if not x2.is_contiguous():
        x2 = _mat(x2)
    m = x2.shape[0]
    out = torch.empty((m, n), dtype=x.dtype)
    if m and n:
        b32 = _bias32(bias)
        q4, sc = _vec(w_q4), _vec(w_scale)
        z = None if w_zero is None else _vec(w_zero)
        _native.load().w4_linear(x2.data_ptr(), _DT[x.dtype], _ld(x2), q4.data_ptr(), sc.data_ptr(), _ptr(z), packed,
                                 _ptr(b32), out.data_ptr(), _OUT_DT[x.dtype], n, m, n, k, group_size,
                                 torch.get_num_threads())
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


# ---- lowrank_linear ----
def _transposed_ld(f: Tensor) -> tuple[Tensor, int]:
    """f (A, B) as f.T (B, A) with unit inner stride: (tensor whose data_ptr starts f.T, its row stride).
    Free when f is already a transposed view (nn.LowRankLinear stores u and v that way), a copy otherwise."""
    a, b = f.shape
    s0, s1 = f.stride()
    if (a <= 1 or s0 == 1) and (b <= 1 or s1 >= a):
        return f, (s1 if b > 1 else a)
    return f.t().contiguous(), a


def lowrank_linear(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Fused (x @ v.T) @ u.T + bias; the kernel reads v.T (K, R) and u.T (R, N) with unit inner stride."""
    # The decode path pays for every Python step: a one-expression test of the common well-formed
    # call, and the reference's full checks (with their error messages) only when it fails. Devices
    # need no check here: the dispatcher only routes all-CPU calls to this kernel.
    dt = x.dtype
    if not (dt in _DT and u.dtype == dt and v.dtype == dt and u.dim() == 2 and v.dim() == 2 and x.dim() >= 1
            and v.shape[1] == x.shape[-1] and u.shape[1] == v.shape[0]
            and (bias is None or bias.dim() == 1 and bias.shape[0] == u.shape[0] and bias.dtype in _DT)
            and not (torch.is_grad_enabled() and (x.requires_grad or u.requires_grad or v.requires_grad
                                                  or bias is not None and bias.requires_grad))):
        reference._check_lowrank(x, u, v, bias)
    k = x.shape[-1]
    n, r = u.shape
    m = math.prod(x.shape[:-1])
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype)
    if m and n:
        x2 = x if x.dim() == 2 else x.reshape(m, k)  # explicit sizes: any of M, K, R may be 0
        sx = x2.stride()
        if k > 1 and sx[1] != 1 or m > 1 and sx[0] < k:
            x2 = x2.contiguous()
            sx = x2.stride()
        vt, ldvt = _transposed_ld(v)
        ut, ldut = _transposed_ld(u)
        b32 = None if bias is None else bias.float().contiguous()
        _native.load().lowrank_matmul(x2.data_ptr(), sx[0] if m > 1 else k, vt.data_ptr(), ldvt,
                                      ut.data_ptr(), ldut, _ptr(b32), out.data_ptr(), n, _DT[x.dtype], m, k, r, n,
                                      torch.get_num_threads())
    return out


# ---- block-sparse attention ----
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


# ---- varlen attention (packed sequences without padding) ----
_VARLEN_BLOCK = 128  # keys per listed block (and query rows per block); 5-8% faster than 64 at L = 128, D = 32


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool,
                     scale: float | None) -> Tensor:
    cu = reference._check_varlen(q, k, v, cu_seqlens, scale)
    if q.dtype not in _DT:  # float16: no native kernel; the reference computes it in fp32
        return reference.varlen_attention(q, k, v, cu_seqlens, causal, scale)
    t, hq, d = q.shape
    out = torch.empty((t, hq, d), dtype=q.dtype)
    if out.numel() == 0:
        return out
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    cu_t = cu_seqlens.contiguous()
    max_len = max(b - a for a, b in zip(cu, cu[1:]))
    _native.load().varlen_attention(
        q.data_ptr(), list(q.stride()[:2]), k.data_ptr(), list(k.stride()[:2]), v.data_ptr(), list(v.stride()[:2]),
        out.data_ptr(), [hq * d, d], _DT[q.dtype], cu_t.data_ptr(), len(cu) - 1, hq, k.shape[1], max_len, d,
        _VARLEN_BLOCK, causal, float(scale), torch.get_num_threads())
    return out


def register(lib: torch.library.Library) -> None:
    """Registers the native kernels for the CPU dispatch key."""
    lib.impl("quantize_per_token", quantize_per_token, "CPU")
    lib.impl("int8_gemm", int8_gemm, "CPU")
    lib.impl("int8_linear", int8_linear, "CPU")
    lib.impl("int8_pack_weight", int8_pack_weight, "CPU")
    lib.impl("int8_weight_only_linear", int8_weight_only_linear, "CPU")
    lib.impl("lowrank_linear", lowrank_linear, "CPU")
    lib.impl("w4_pack_weight", w4_pack_weight, "CPU")
    lib.impl("w4_linear", w4_linear, "CPU")
    lib.impl("block_sparse_attention", block_sparse_attention, "CPU")  # block-sparse attention
    lib.impl("varlen_attention", varlen_attention, "CPU")  # varlen attention
