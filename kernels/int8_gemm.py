"""int8_gemm and int8_linear: int8 x int8 tl.dot with int32 accumulation and a fused fp32 epilogue.

Spec: slimrt.ops.reference.int8_gemm / int8_linear.
    out[m, n] = ((sum_k a[m, k] * b[n, k]) * a_scale[m]) * b_scale[n] (+ bias[n]) (-> activation)
a (M, K) int8, b (N, K) int8 (nn.Linear layout, read K-major without a transpose copy).
int8_linear quantizes x per token first: for M <= DECODE_M inside the GEMM's prologue (the x rows are
tiny and each program re-reads them from L2; one launch instead of two), above that with the
quantize_per_token kernel (x is read once instead of once per N tile).
Napkin math (H200): int8 tensor cores ~1979 TOP/s dense, HBM ~4.8 TB/s; decode (M <= 16) is bound by
streaming the N x K int8 weight: 4096 x 14336 -> 59 MB -> ~12 us at full bandwidth.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, apply_activation, autotune, cast_out, check_activation, check_device, rows
from .quantize_per_token import quantize_per_token, quantize_tile, row_absmax, row_scales

DECODE_M = 16  # int8_linear fuses the activation quantization into the GEMM up to this many rows

# A small config set: prefill tiles for large M, and BLOCK_M = 16 decode tiles (the smallest int8
# MMA M) with wide N/K so that M = 1..16 streams the weight with enough programs in flight.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 8}, num_warps=4, num_stages=4),
]
DECODE_CONFIGS = [
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 512, "GROUP_M": 1}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
]
# Under the interpreter (CPU tests): one small config, so odd shapes still cross tile edges.
INTERP_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}


@triton.jit
def _int8_gemm_kernel(
    a_ptr, b_ptr, out_ptr, a_scale_ptr, b_scale_ptr, bias_ptr,
    M, N, K, stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_on,
    m_bucket,  # only an autotune key: M rounded up to a power of two, so each bucket tunes once
    QUANT_A: tl.constexpr,  # a is float: quantize each row in the prologue (int8_linear, decode)
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped program order: GROUP_M row tiles share each B column tile while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # 64-bit row offsets: M * K or N * K may pass 2^31 elements.
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_cols = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn

    if QUANT_A:
        # Prologue pass 1: per-row absmax of the float x rows (BLOCK_M x K, L2 resident for decode).
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        n_bad = tl.zeros([BLOCK_M], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            x = tl.load(a_rows + kk[None, :] * stride_ak, mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
            t_amax, t_bad = row_absmax(x.to(tl.float32))
            amax = tl.maximum(amax, t_amax)
            n_bad += t_bad
        inv, a_scale = row_scales(amax, n_bad)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        a = tl.load(a_rows + kk[None, :] * stride_ak, mask=mask_m[:, None] & mask_k[None, :], other=0)
        if QUANT_A:
            a = quantize_tile(a.to(tl.float32), inv)  # (BLOCK_M, BLOCK_K) int8, same values as the kernel
        b = tl.load(b_cols + kk[:, None] * stride_bk, mask=mask_k[:, None] & mask_n[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # (BLOCK_M, BLOCK_K) @ (BLOCK_K, BLOCK_N), exact

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_SCALE:
        if not QUANT_A:
            a_scale = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
        b_scale = tl.load(b_scale_ptr + offs_n, mask=mask_n, other=0.0)
        y = (acc.to(tl.float32) * a_scale[:, None]) * b_scale[None, :]  # the reference's order
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        y = apply_activation(y, ACTIVATION)
        tl.store(out_ptrs, cast_out(y, out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptrs, acc, mask=mask)


_tuned = autotune(CONFIGS, key=["m_bucket", "N", "K", "QUANT_A", "HAS_SCALE", "HAS_BIAS"])(_int8_gemm_kernel)
_tuned_decode = autotune(DECODE_CONFIGS, key=["m_bucket", "N", "K", "QUANT_A", "HAS_SCALE", "HAS_BIAS"])(
    _int8_gemm_kernel
)


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, a_scale: torch.Tensor | None,
            b_scale: torch.Tensor | None, bias: torch.Tensor | None, quant_a: bool, activation: str,
            config: dict | None) -> None:
    m, k = a.shape
    n = b.shape[0]
    if config is None and INTERPRET:
        config = INTERP_CONFIG
    if config is not None:
        kernel, meta = _int8_gemm_kernel, dict(config)
    else:
        kernel, meta = (_tuned_decode if m <= DECODE_M else _tuned), {}

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    has_scale = b_scale is not None
    dummy = out  # never read: HAS_SCALE/HAS_BIAS are compile-time False
    kernel[grid](
        a, b, out, a_scale if a_scale is not None else dummy, b_scale if has_scale else dummy,
        bias if bias is not None else dummy,
        m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        triton.next_power_of_2(m),
        QUANT_A=quant_a, HAS_SCALE=has_scale, HAS_BIAS=bias is not None, ACTIVATION=activation, **meta,
    )


def int8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None = None,
              b_scale: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
              bias: torch.Tensor | None = None, activation: str | None = None,
              config: dict | None = None) -> torch.Tensor:
    """(a (M, K) int8 @ b (N, K) int8 .T) * a_scale * b_scale (+ bias, activation) -> (M, N) out_dtype.

    out_dtype int32 returns the raw accumulator (no scales). config forces one tile config (tests): the
    BLOCK_* / GROUP_M meta-parameters, optionally with num_warps and num_stages.
    Arguments are checked by the op layer (slimrt.ops); this launcher trusts them.
    """
    check_device("int8_gemm", a, b, a_scale, b_scale, bias)
    act = check_activation("int8_gemm", activation)
    m, k = a.shape
    n = b.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:  # empty sum: the epilogue of zeros
        y = torch.zeros((m, n), dtype=torch.float32, device=a.device)
        if bias is not None:
            y += bias.float()
        return out.copy_(_torch_activation(y, act))
    _launch(a, b, out, a_scale, b_scale, bias, False, act, config)
    return out


def int8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                activation: str | None = None, fuse_quant: bool | None = None,
                config: dict | None = None) -> torch.Tensor:
    """W8A8 linear: x (..., K) float32|bfloat16, w_q (N, K) int8, w_scale (N,) -> (..., N) in x.dtype.

    fuse_quant: quantize x inside the GEMM prologue (default: when M <= DECODE_M) or in its own
    kernel first; both give the reference's int8 values exactly.
    """
    check_device("int8_linear", x, w_q, w_scale, bias)
    act = check_activation("int8_linear", activation)
    lead, k = x.shape[:-1], x.shape[-1]
    n = w_q.shape[0]
    x2 = rows(x)  # (M, K)
    m = x2.shape[0]
    if fuse_quant is None:
        fuse_quant = m <= DECODE_M
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m and n and k == 0:
        out.copy_(_torch_activation(torch.zeros((m, n), device=x.device) + (0 if bias is None else bias.float()), act))
    elif m and n:
        if fuse_quant:
            _launch(x2, w_q, out, None, w_scale, bias, True, act, config)
        else:
            x_q, x_scale = quantize_per_token(x2)
            _launch(x_q, w_q, out, x_scale, w_scale, bias, False, act, config)
    return out.reshape(*lead, n)


def _torch_activation(y: torch.Tensor, act: str) -> torch.Tensor:
    """The epilogue activation for the K = 0 path, which launches no kernel."""
    fn = {"": lambda t: t, "relu": torch.relu, "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu}
    return fn[act](y)
