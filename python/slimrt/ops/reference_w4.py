"""The int4 weight family (``w4``): storage format, quantizer and the reference linear (the spec).

Storage of a weight W (N, K) with group size G in {32, 64, 128}, ng = ceil(K / G) groups along K:

    w_q4    (N, ng * G / 2) uint8   two 4-bit codes per byte: byte j of row n holds k = 2j in its low
                                    nibble and k = 2j + 1 in its high nibble; codes of k >= K are 0.
    w_scale (N, ng) float16         one scale per (row, group), finite and > 0.
    w_zero  (N, ng) uint8 | None    zero point per (row, group) in [0, 15]; None means 8 everywhere
                                    (symmetric: codes 0..15 stand for -8..7).

    W[n, k] ~= (code[n, k] - zero[n, k // G]) * scale[n, k // G]

The linear (``w4_linear``) multiplies int8-quantized activations with the codes, one group at a time:
x is quantized per row and group (``quantize_per_group``: symmetric, amax / 127, round half to even),
each group's dot product is exact in integers, and the groups are summed in fp32 in order of g:

    isum[m, n, g] = sum_{k in g} (code[n, k] - zero[n, g]) * x_q[m, k]          (exact int32)
    acc[m, n]     = sum_g in order 0..ng-1 of  float(isum) * (scale[n, g] * x_scale[m, g])
    out[m, n]     = acc[m, n] + bias[n]

with every product and sum rounded to fp32 separately (no fused multiply-add). This op order is part
of the spec: the native kernels (csrc/w4_linear) follow it and match this function bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slimrt.ops import _check

GROUP_SIZES = (32, 64, 128)
INT8_MAX = 127


def check_group_size(op: str, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{op}: group_size={group_size!r} is not one of {GROUP_SIZES}")


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def pack_codes(codes: Tensor, group_size: int) -> Tensor:
    """codes (N, K) integers in [0, 15] -> w_q4 (N, ng * G / 2) uint8 (see the module doc); pad codes are 0."""
    n, k = codes.shape
    k_pad = num_groups(k, group_size) * group_size
    c = torch.zeros((n, k_pad), dtype=torch.uint8, device=codes.device)
    c[:, :k] = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_codes(w_q4: Tensor, in_features: int) -> Tensor:
    """w_q4 (N, Kp / 2) uint8 -> codes (N, in_features) uint8 in [0, 15]."""
    lo, hi = w_q4 & 0x0F, w_q4 >> 4
    return torch.stack((lo, hi), dim=-1).reshape(w_q4.shape[0], 2 * w_q4.shape[1])[:, :in_features]


CLIP_GRID = tuple(1.0 - 0.04 * i for i in range(8))  # range shrink factors tried per group: 1.0 .. 0.72


def quantize(w: Tensor, group_size: int, zero_point: bool = True,
             clip_search: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Round-to-nearest int4 of w (N, K) float -> (w_q4, w_scale, w_zero or None).

    With a zero point: per group, scale = (max - min) / 15 (min <= 0 <= max, so 0 stays inside the
    grid), zero = round(-min / scale). Symmetric (zero 8): with m the group's value of largest
    magnitude, scale = -m / 8 when m < 0 and m / 7 otherwise, so m is code 0 or 15 exactly (llama.cpp's
    Q4_0 maps m to -8 with a signed scale; scales here stay positive).
    ``clip_search``: the range (min and max, or m) is also shrunk by each factor of CLIP_GRID and the
    group keeps the one whose codes reconstruct it with the least squared error: clipping a few
    outliers buys a finer grid for the rest (the "auto clip" of AWQ and llama.cpp's k-quants, no data).
    Codes are round(w / scale) + zero clamped to [0, 15], with the fp16-rounded scale.
    """
    check_group_size("w4 quantize", group_size)
    _check.ndim("w4 quantize", "w", w, 2)
    wf = w.detach().float()
    if not bool(torch.isfinite(wf).all()):
        raise ValueError("w4 quantize: w holds NaN or Inf")
    n, k = wf.shape
    ng = num_groups(k, group_size)
    g = torch.zeros((n, ng * group_size), dtype=torch.float32, device=w.device)
    g[:, :k] = wf
    g = g.view(n, ng, group_size)
    # The zero padding past K costs no error in any grid (0 is code `zero`, exactly), so groups are
    # compared whole. In-place passes: this runs over every weight CLIP_GRID times.
    best = best_err = None
    for p in (CLIP_GRID if clip_search else (1.0,)):
        scale, zero = _grid(g, zero_point, p)
        if not clip_search:
            best = (scale, zero)
            break
        s, z = scale.float().unsqueeze(2), zero.unsqueeze(2)
        err = torch.div(g, s).round_().add_(z).clamp_(0, 15).sub_(z).mul_(s).sub_(g).square_().sum(2)
        if best is None:
            best, best_err = (scale, zero), err
        else:
            take = err < best_err
            best = (torch.where(take, scale, best[0]), torch.where(take, zero, best[1]))
            best_err = torch.where(take, err, best_err)
    scale, zero = best
    codes = quantize_codes(g.view(n, ng * group_size)[:, :k], scale, zero, group_size)
    return pack_codes(codes, group_size), scale, (zero.to(torch.uint8) if zero_point else None)


def _grid(g: Tensor, zero_point: bool, shrink: float) -> tuple[Tensor, Tensor]:
    """(scale (N, ng) float16, zero (N, ng) float32) of groups g (N, ng, G) with the range shrunk by ``shrink``."""
    if zero_point:
        lo = g.amin(dim=2).clamp(max=0.0) * shrink
        hi = g.amax(dim=2).clamp(min=0.0) * shrink
        scale = _fp16_scale((hi - lo) / 15.0)
        return scale, torch.round(-lo / scale.float()).clamp(0, 15)
    idx = g.abs().argmax(dim=2, keepdim=True)
    extreme = torch.gather(g, 2, idx).squeeze(2) * shrink
    # The extreme value lands on the grid's end on its own side: -8 s (negative) or 7 s (positive).
    scale = _fp16_scale(torch.where(extreme < 0, -extreme / 8.0, extreme / 7.0))
    return scale, torch.full(scale.shape, 8.0, dtype=torch.float32, device=g.device)


def _fp16_scale(s: Tensor) -> Tensor:
    """Positive float16 scales: an all-zero group gets 1 (any positive scale reconstructs zeros)."""
    s16 = s.to(torch.float16)
    return torch.where(s16 > 0, s16, torch.ones_like(s16))


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, group_size: int) -> Tensor:
    """w (N, K) float, scale (N, ng) float16|float32, zero (N, ng) -> codes (N, K) uint8 =
    clamp(round(w / scale) + zero, 0, 15): the rounding every w4 method ends with."""
    k = w.shape[1]
    s = scale.float().repeat_interleave(group_size, dim=1)[:, :k]
    z = zero.float().repeat_interleave(group_size, dim=1)[:, :k]
    return (torch.round(w.float() / s) + z).clamp(0, 15).to(torch.uint8)


def dequantize(w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, group_size: int, in_features: int) -> Tensor:
    """The (N, K) float32 weight the codes stand for: (code - zero) * scale."""
    codes = unpack_codes(w_q4, in_features).float()
    s = w_scale.float().repeat_interleave(group_size, dim=1)[:, :in_features]
    z = 8.0 if w_zero is None else w_zero.float().repeat_interleave(group_size, dim=1)[:, :in_features]
    return (codes - z) * s


def quantize_per_group(x: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of x (..., K) per group of G along K.

    -> x_q (..., ng * G) int8 (zero past K), x_scale (..., ng) float32, with quantize_per_token's rule
    applied to each group: x_scale = amax / 127, x_q = round_half_even(x * ((1 / amax) * 127)); an
    all-zero group gives scale 0, a group holding NaN or Inf scale NaN and codes 0, and an amax so
    small that 127 / amax overflows gives +-127 for its nonzero values.
    """
    from slimrt.ops.reference import quantize_per_token

    k = x.shape[-1]
    ng = num_groups(k, group_size)
    xp = torch.zeros((*x.shape[:-1], ng * group_size), dtype=torch.float32, device=x.device)
    xp[..., :k] = x.float()
    xq, xs = quantize_per_token(xp.view(*x.shape[:-1], ng, group_size))
    return xq.reshape(*x.shape[:-1], ng * group_size), xs


def check_w4(op: str, x: Tensor, w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, bias: Tensor | None,
             group_size: int) -> None:
    check_group_size(op, group_size)
    _check.dtype(op, "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim(op, "x", x, 1)
    _check.dtype(op, "w_q4", w_q4, (torch.uint8,))
    _check.ndim(op, "w_q4", w_q4, 2)
    _check.dtype(op, "w_scale", w_scale, (torch.float16,))
    k = x.shape[-1]
    n, ng = w_q4.shape[0], num_groups(k, group_size)
    if w_q4.shape[1] * 2 != ng * group_size:
        raise ValueError(f"{op}: w_q4 is {tuple(w_q4.shape)} but x has K = {k}: expected ({n}, "
                         f"{ng * group_size // 2}) for group_size {group_size}")
    _check.shape(op, "w_scale", w_scale, (n, ng))
    if w_zero is not None:
        _check.dtype(op, "w_zero", w_zero, (torch.uint8,))
        _check.shape(op, "w_zero", w_zero, (n, ng))
    _check.bias(op, bias, n)
    _check.same_device(op, x=x, w_q4=w_q4, w_scale=w_scale, w_zero=w_zero, bias=bias)
    _check.no_grad_needed(op, x=x, bias=bias)


def w4_linear(x: Tensor, w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None = None, bias: Tensor | None = None,
              group_size: int = 32) -> Tensor:
    """out (..., N) = the w4 linear of the module doc; x (..., K) float32|bfloat16, out in x.dtype.

    w_q4 (N, ng * G / 2) uint8, w_scale (N, ng) float16, w_zero (N, ng) uint8 or None (8), bias (N,) float.
    """
    check_w4("w4_linear", x, w_q4, w_scale, w_zero, bias, group_size)
    k, n = x.shape[-1], w_q4.shape[0]
    ng = num_groups(k, group_size)
    x2 = x.reshape(math.prod(x.shape[:-1]), k)  # (M, K); -1 is ambiguous when K == 0
    xq, xs = quantize_per_group(x2, group_size)  # (M, ng * G), (M, ng)
    codes = unpack_codes(w_q4, ng * group_size).to(torch.float64)  # (N, ng * G)
    zero = torch.full((n, ng), 8.0, dtype=torch.float64, device=x.device) if w_zero is None else w_zero.double()
    sw = w_scale.float()
    acc = torch.zeros((x2.shape[0], n), dtype=torch.float32, device=x.device)
    for g in range(ng):
        cols = slice(g * group_size, (g + 1) * group_size)
        wg = codes[:, cols] - zero[:, g:g + 1]  # (N, G), exact small integers
        isum = (xq[:, cols].double() @ wg.T).float()  # (M, N), exact (|isum| <= G * 15 * 127 < 2^24)
        acc = acc + isum * (sw[:, g].unsqueeze(0) * xs[:, g].unsqueeze(1))
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(x.dtype).reshape(*x.shape[:-1], n)
