"""Triton kernels on a real GPU: bf16, larger shapes, every autotune config, the autotuned op path.

Skipped without CUDA (conftest) and under TRITON_INTERPRET=1 (these shapes would take minutes there).
Tolerances: int8 parts exact; fp32 outputs to a few ulp (the GPU may contract the epilogue's
multiply-add into one FMA); bf16 outputs within 2 bf16 ulp of the reference, and for the low-rank
bf16 path (h rounded to bf16 between the two dots) at most 2x the error of PyTorch's own bf16
x @ v.T @ u.T against an fp64 oracle (the flash-attention rule).
"""

import os

import pytest
import torch

import slimrt
from slimrt.ops import reference as R

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="real-GPU shapes; too slow interpreted"),
]
DEV = "cuda"
BF16_RTOL = 2**-7  # 2 ulp of bf16's 8-bit mantissa


def on_cpu(fn, *args):
    """The reference on the CPU, result back on the GPU: torch has no integer matmul on CUDA (the int8
    references use an int64 one), and the CPU reference is the spec the other backends are held to."""
    moved = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*moved)
    return tuple(o.to(DEV) for o in out) if isinstance(out, tuple) else out.to(DEV)


def _int8(*shape: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=DEV)


def _weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return R.quantize_per_channel(torch.randn(n, k, device=DEV))


def test_cuda_is_served_by_triton():
    assert slimrt.ops.backend()["cuda"] == "triton", slimrt.ops.backend()
    assert slimrt.info()["triton"] and slimrt.info()["cuda"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,k", [(1, 4096), (300, 4096), (33, 14336), (5, 1), (17, 67)])
def test_quantize_per_token_exact(m, k, dtype):
    # K = 14336 > 8192 takes the two-read path.
    x = (torch.randn(m, k, device=DEV) * 4).to(dtype)
    x[0, 0] = float("nan") if m > 1 else x[0, 0]
    q, s = slimrt.ops.quantize_per_token(x)
    q_ref, s_ref = on_cpu(R.quantize_per_token, x)
    assert torch.equal(q, q_ref), f"{int((q != q_ref).sum())} int8 values differ"
    assert torch.equal(s.nan_to_num(-1.0), s_ref.nan_to_num(-1.0))


def _all_int8_configs():
    from slimrt.kernels import int8_gemm as K

    return [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages} for c in K.CONFIGS + K.DECODE_CONFIGS]


@pytest.mark.parametrize("m", [1, 16, 17, 300])
def test_int8_gemm_every_config_exact(m):
    from slimrt.kernels.int8_gemm import int8_gemm

    a, b = _int8(m, 1000), _int8(1031, 1000)
    ref = on_cpu(R.int8_gemm, a, b, None, None, torch.int32)
    for config in _all_int8_configs():
        out = int8_gemm(a, b, out_dtype=torch.int32, config=config)
        assert torch.equal(out, ref), f"config {config} differs at M={m}"


def test_int8_gemm_worst_case_large_k():
    a = torch.full((16, 16384), -128, dtype=torch.int8, device=DEV)
    assert (slimrt.ops.int8_gemm(a, a, None, None, torch.int32) == 16384 * 128 * 128).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 16, 17, 128, 1000])
def test_int8_linear_autotuned(m, dtype):
    # M <= 16 fuses the quantization into the GEMM (decode configs), above it two kernels.
    k, n = 4096, 1536
    x = torch.randn(m, k, device=DEV).to(dtype)
    w_q, w_s = _weight(n, k)
    bias = torch.randn(n, device=DEV).to(dtype)
    y = slimrt.ops.int8_linear(x, w_q, w_s, bias)
    ref = on_cpu(R.int8_linear, x, w_q, w_s, bias)
    rtol = 1e-6 if dtype == torch.float32 else BF16_RTOL
    torch.testing.assert_close(y, ref, rtol=rtol, atol=rtol * ref.abs().max().item())
    # Decode (one row) gives the batched path's numbers: same int8 values, same epilogue.
    torch.testing.assert_close(slimrt.ops.int8_linear(x[:1], w_q, w_s, bias), y[:1], rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 4, 16, 17, 512])
def test_int8_weight_only_linear(m, dtype):
    k, n = 4096, 1031
    x = torch.randn(m, k, device=DEV).to(dtype)
    w_q, w_s = _weight(n, k)
    y = slimrt.ops.int8_weight_only_linear(x, w_q, w_s, None)
    ref = on_cpu(R.int8_weight_only_linear, x, w_q, w_s)
    rtol = 1e-5 if dtype == torch.float32 else BF16_RTOL
    torch.testing.assert_close(y, ref, rtol=rtol, atol=rtol * ref.abs().max().item())


def test_int8_weight_only_every_config():
    from slimrt.kernels import int8_weight_only_linear as K

    x = torch.randn(17, 1000, device=DEV, dtype=torch.bfloat16)
    w_q, w_s = _weight(333, 1000)
    ref = on_cpu(R.int8_weight_only_linear, x, w_q, w_s)
    for c in K.CONFIGS:
        y = K.int8_weight_only_linear(x, w_q, w_s, config={**c.kwargs, "num_warps": c.num_warps,
                                                           "num_stages": c.num_stages})
        torch.testing.assert_close(y, ref, rtol=BF16_RTOL, atol=BF16_RTOL * ref.abs().max().item(), msg=str(c))


@pytest.mark.parametrize("r", [16, 64, 256, 257, 512])
@pytest.mark.parametrize("m", [1, 77, 2048])
def test_lowrank_linear_fp32(m, r):
    k, n = 2048, 1536
    x = torch.randn(m, k, device=DEV)
    u, v = torch.randn(n, r, device=DEV) / r**0.5, torch.randn(r, k, device=DEV) / k**0.5
    bias = torch.randn(n, device=DEV)
    ref = R.lowrank_linear(x, u, v, bias)
    torch.testing.assert_close(slimrt.ops.lowrank_linear(x, u, v, bias), ref, rtol=1e-5,
                               atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("r", [64, 256, 300])
@pytest.mark.parametrize("m", [1, 16, 333])
def test_lowrank_linear_bf16_within_2x_torch_error(m, r):
    k, n = 4096, 4096
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    u = (torch.randn(n, r, device=DEV) / r**0.5).bfloat16()
    v = (torch.randn(r, k, device=DEV) / k**0.5).bfloat16()
    oracle = (x.double() @ v.double().T) @ u.double().T
    torch_err = ((x @ v.T) @ u.T).double().sub(oracle).abs().max().item()
    err = slimrt.ops.lowrank_linear(x, u, v, None).double().sub(oracle).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, f"slimrt {err:.3e} vs torch bf16 {torch_err:.3e}"


def test_noncontiguous_inputs_on_gpu():
    x = torch.randn(96, 40, device=DEV).T[:, 5:]  # (40, 91) strided
    w_q, w_s = _weight(64, 91)
    torch.testing.assert_close(slimrt.ops.int8_linear(x, w_q, w_s, None), on_cpu(R.int8_linear, x, w_q, w_s),
                               rtol=1e-6, atol=1e-5)
    a, b = _int8(91, 40).T, _int8(70, 182)[:, ::2]
    want = on_cpu(R.int8_gemm, a, b, None, None, torch.int32)
    assert torch.equal(slimrt.ops.int8_gemm(a, b, None, None, torch.int32), want)


# --- block_sparse_attention (op registration follows the attention branch's merge) ----------------

def _attention_case(b, hq, hkv, lq, lk, d, bs, density, dtype, causal=True, seed=0):
    from attention_oracle import dense_allowed, random_layout

    g = torch.Generator().manual_seed(seed)
    counts, idx, blocks = random_layout(1, hq, lq, lk, bs, density, g, keep_diagonal=lq == lk)
    allowed = dense_allowed(blocks, bs, lq, lk, causal, 0, 0, None).to(DEV)
    q = torch.randn(b, hq, lq, d, device=DEV).to(dtype)
    k = torch.randn(b, hkv, lk, d, device=DEV).to(dtype)
    v = torch.randn(b, hkv, lk, d, device=DEV).to(dtype)
    return q, k, v, counts.to(DEV), idx.to(DEV), allowed


@pytest.mark.parametrize("lq,lk,density", [(2048, 2048, 0.1), (2048, 2048, 0.5), (1, 8192, 0.5), (333, 1000, 0.3)])
def test_block_sparse_attention_bf16_within_2x_sdpa_error(lq, lk, density):
    from attention_oracle import oracle
    from slimrt.kernels.block_sparse_attention import block_sparse_attention

    q, k, v, counts, idx, allowed = _attention_case(1, 8, 2, lq, lk, 128, 128, density, torch.bfloat16)
    ref = oracle(q, k, v, allowed, 1 / 128**0.5)
    out = block_sparse_attention(q, k, v, counts, idx, 128, causal=True)
    nonempty = allowed.any(-1).expand(ref.shape[:-1])  # SDPA gives NaN on empty rows; the kernel zeros
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                                            attn_mask=allowed)
    torch_err = (sdpa.double() - ref)[nonempty].abs().max().item()
    err = (out.double() - ref)[nonempty].abs().max().item()
    assert err <= 2 * torch_err + 1e-6, f"slimrt {err:.3e} vs SDPA bf16 {torch_err:.3e}"
    assert (out[~nonempty] == 0).all()


@pytest.mark.parametrize("lq,lk", [(1024, 1024), (1, 4096), (77, 1000)])
def test_block_sparse_attention_fp32(lq, lk):
    from attention_oracle import oracle
    from slimrt.kernels.block_sparse_attention import block_sparse_attention

    q, k, v, counts, idx, allowed = _attention_case(2, 4, 4, lq, lk, 64, 64, 0.4, torch.float32)
    ref = oracle(q, k, v, allowed, 1 / 8)
    for splits in (None, 1, 5):
        out = block_sparse_attention(q, k, v, counts, idx, 64, causal=True, num_splits=splits)
        err = (out.double() - ref).abs().max().item()
        assert err <= 2e-5 * max(1.0, ref.abs().max().item()), f"splits={splits}: max error {err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,g", [(1, 11008, 4096, 64), (128, 576, 1536, 32), (17, 67, 130, 128)])
def test_w4_linear_close_to_the_spec(m, n, k, g, dtype):
    """The integer group sums are exact on the GPU too; acc += isum * (scale * x_scale) may be one FMA
    there, so fp32 outputs agree to a few ulp of the accumulated magnitude, bf16 ones within 2 ulp."""
    from slimrt.ops import reference_w4 as W4

    q4, s, z = W4.quantize(torch.randn(n, k), g, True)
    x = (torch.randn(m, k) * 2).to(dtype)
    want = W4.w4_linear(x, q4, s, z, None, g).to(DEV)
    got = slimrt.ops.w4_linear(x.to(DEV), q4.to(DEV), s.to(DEV), z.to(DEV), None, None, g)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=BF16_RTOL, atol=BF16_RTOL * want.abs().max().item())
