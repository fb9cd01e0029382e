"""The slimrt ops through the Triton backend, on CPU tensors via the Triton interpreter.

Every call goes through torch.ops.slimrt.* exactly as model code does; SLIMRT_BACKEND=triton has
registered the Triton kernels for the CPU key. Oracle: slimrt.ops.reference. Tolerances: int8 parts
exact; float outputs of the int8 ops exact too (the interpreter evaluates the epilogue in the
reference's order in fp32, with no FMA contraction); fp32 GEMMs (weight-only, low-rank) differ from
the reference only in summation order: rtol 1e-5 plus atol 1e-5 x the output's scale.
The interpreter multiplies bf16 tl.dot operands as raw integers, so under it the kernels feed bf16
tiles to tl.dot as fp32 (kernels/_common.mma: exact products, fp32 accumulation, as a GPU's bf16 MMA);
the bf16 tests here check everything around the dot (loads, casts, epilogues), the GPU tests the MMA.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import slimrt
from slimrt.ops import reference as R
from triton_env import ODD, interpreter_only

pytestmark = [interpreter_only, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def test_backend_is_triton_for_cpu():
    # Guards every test below: they must exercise the Triton kernels, not the native or reference ones.
    assert slimrt.ops.backend()["cpu"] == "triton", slimrt.ops.backend()


def _worst(actual: torch.Tensor, expected: torch.Tensor) -> str:
    d = (actual.double() - expected.double()).abs().nan_to_num(float("inf"))
    i = int(d.flatten().argmax())
    return f"worst at flat index {i}: got {actual.flatten()[i].item()}, expected {expected.flatten()[i].item()}"


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, actual.shape,
                                                                               expected.dtype, expected.shape)
    same = (actual == expected) | (actual.isnan() & expected.isnan() if actual.is_floating_point() else False)
    assert bool(same.all()), f"{int((~same).sum())} of {same.numel()} differ; " + _worst(actual, expected)


def assert_close_fp32(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


# --- quantize_per_token ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,k", [(1, 1), (7, 33), (17, 67), (3, 1025), (1, 4099)])
def test_quantize_per_token_exact(m, k, dtype):
    x = (torch.randn(m, k) * torch.logspace(-3, 3, m).unsqueeze(1)).to(dtype)
    q, s = slimrt.ops.quantize_per_token(x)
    q_ref, s_ref = R.quantize_per_token(x)
    assert_equal(q, q_ref)
    assert_equal(s, s_ref)


def test_quantize_per_token_ties_round_half_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 63.5, 64.5, -126.5]])
    assert_equal(slimrt.ops.quantize_per_token(x)[0], R.quantize_per_token(x)[0])


def test_quantize_per_token_special_rows():
    x = torch.randn(6, 40)
    x[0] = 0  # zero row -> scale 0, q 0
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3, 39] = float("-inf")
    x[4] *= 1e-38  # subnormal-ish amax: 127 / amax is huge but finite
    q, s = slimrt.ops.quantize_per_token(x)
    q_ref, s_ref = R.quantize_per_token(x)
    assert_equal(q, q_ref)
    assert_equal(s, s_ref)
    assert s[0] == 0 and s[1:4].isnan().all() and (q[:4] == 0).all()


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (2, 3, 0), (0,), (2, 0, 7)])
def test_quantize_per_token_zero_size(shape):
    x = torch.randn(shape)
    q, s = slimrt.ops.quantize_per_token(x)
    q_ref, s_ref = R.quantize_per_token(x)
    assert_equal(q, q_ref)
    assert_equal(s, s_ref)


def test_quantize_per_token_noncontiguous_and_batched():
    x = torch.randn(3, 40, 19).transpose(1, 2)[:, ::2]  # (3, 10, 40), strided both ways
    q, s = slimrt.ops.quantize_per_token(x)
    assert_equal(q, R.quantize_per_token(x)[0])
    assert_equal(s, R.quantize_per_token(x)[1])


# --- int8_gemm ---------------------------------------------------------------------------------

def _int8(*shape: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8)


@pytest.mark.parametrize("m", ODD)
@pytest.mark.parametrize("n,k", [(1, 1), (7, 67), (33, 17), (17, 129)])
def test_int8_gemm_int32_exact(m, n, k):
    a, b = _int8(m, k), _int8(n, k)
    assert_equal(slimrt.ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32))


def test_int8_gemm_worst_case_operands():
    # -128 * -128 over K = 1000: 16.4M per row, far past int16, exact in int32.
    a = torch.full((3, 1000), -128, dtype=torch.int8)
    out = slimrt.ops.int8_gemm(a, a, None, None, torch.int32)
    assert (out == 1000 * 128 * 128).all(), out


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 33, 67), (17, 7, 33), (67, 17, 1)])
def test_int8_gemm_scaled_exact(m, n, k, out_dtype):
    a, b = _int8(m, k), _int8(n, k)
    a_s, b_s = torch.rand(m) + 0.01, torch.rand(n) + 0.01
    assert_equal(slimrt.ops.int8_gemm(a, b, a_s, b_s, out_dtype), R.int8_gemm(a, b, a_s, b_s, out_dtype))


@pytest.mark.parametrize("m,n,k", [(0, 5, 7), (5, 0, 7), (5, 7, 0), (0, 0, 0)])
def test_int8_gemm_zero_size(m, n, k):
    a, b = _int8(m, k), _int8(n, k)
    assert_equal(slimrt.ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32))
    a_s, b_s = torch.rand(m), torch.rand(n)
    assert_equal(slimrt.ops.int8_gemm(a, b, a_s, b_s, torch.float32), R.int8_gemm(a, b, a_s, b_s, torch.float32))


def test_int8_gemm_noncontiguous():
    a = _int8(40, 17).T[3:]  # (14, 40) with stride (1, 17)
    b = _int8(33, 80)[:, ::2]  # (33, 40) with stride (80, 2)
    assert_equal(slimrt.ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32))
    a_exp = _int8(1, 40).expand(5, 40)  # stride 0 rows
    assert_equal(slimrt.ops.int8_gemm(a_exp, b, None, None, torch.int32),
                 R.int8_gemm(a_exp, b, None, None, torch.int32))


@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_int8_gemm_property(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    assert_equal(slimrt.ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32))


def test_int8_gemm_errors_name_the_argument():
    with pytest.raises(TypeError, match="a has dtype"):
        slimrt.ops.int8_gemm(torch.zeros(2, 3), _int8(2, 3), None, None, torch.int32)
    with pytest.raises(ValueError, match="K differs"):
        slimrt.ops.int8_gemm(_int8(2, 3), _int8(2, 4), None, None, torch.int32)


# --- int8_linear, int8_weight_only_linear ---------------------------------------------------------

def _weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return R.quantize_per_channel(torch.randn(n, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead,n,k", [((1,), 33, 67), ((7,), 17, 33), ((2, 17), 7, 67), ((67,), 1, 17)])
def test_int8_linear_exact(lead, n, k, dtype):
    # lead (1,) and (7,) take the fused-quantization decode path, 34 and 67 rows the two-kernel path.
    x = torch.randn(*lead, k).to(dtype)
    w_q, w_s = _weight(n, k)
    bias = torch.randn(n).to(dtype)
    assert_equal(slimrt.ops.int8_linear(x, w_q, w_s, bias), R.int8_linear(x, w_q, w_s, bias))
    assert_equal(slimrt.ops.int8_linear(x, w_q, w_s), R.int8_linear(x, w_q, w_s))


def test_int8_linear_special_rows():
    x = torch.randn(5, 33)
    x[0] = 0  # all-zero row -> exactly the bias
    x[1, 2] = float("nan")  # NaN row -> NaN outputs, never hidden
    x[2, 7] = float("inf")
    w_q, w_s = _weight(17, 33)
    bias = torch.randn(17)
    for rows in (x, x.repeat(5, 1)):  # 5 rows: fused quantization; 25 rows: separate kernel
        y = slimrt.ops.int8_linear(rows, w_q, w_s, bias)
        assert_equal(y, R.int8_linear(rows, w_q, w_s, bias))
        assert_equal(y[0], bias)
        assert y[1:3].isnan().all()


@pytest.mark.parametrize("m,n", [(0, 5), (5, 0)])
def test_int8_linear_zero_size(m, n):
    x = torch.randn(m, 9)
    w_q, w_s = _weight(n, 9)
    assert_equal(slimrt.ops.int8_linear(x, w_q, w_s, None), R.int8_linear(x, w_q, w_s))
    assert_equal(slimrt.ops.int8_weight_only_linear(x, w_q, w_s, None), R.int8_weight_only_linear(x, w_q, w_s))


def test_linear_k_zero_is_bias():
    # K = 0: an empty sum; the output is the bias (reference.int8_linear cannot reshape (3, 0) rows).
    x, w_q, w_s, bias = torch.randn(3, 0), _int8(4, 0), torch.ones(4), torch.randn(4)
    assert_equal(slimrt.ops.int8_linear(x, w_q, w_s, bias), bias.expand(3, 4))
    assert_equal(slimrt.ops.int8_weight_only_linear(x, w_q, w_s, bias), bias.expand(3, 4))


@pytest.mark.parametrize("m", ODD)
@pytest.mark.parametrize("n,k", [(33, 67), (7, 17)])
def test_int8_weight_only_linear_fp32(m, n, k):
    x = torch.randn(m, k)
    w_q, w_s = _weight(n, k)
    bias = torch.randn(n)
    assert_close_fp32(slimrt.ops.int8_weight_only_linear(x, w_q, w_s, bias),
                      R.int8_weight_only_linear(x, w_q, w_s, bias))


def test_linear_noncontiguous():
    x = torch.randn(40, 21).T[:, 3:]  # (21, 37) strided
    w_q, w_s = _weight(80, 37)
    w_q = w_q[::2]  # (40, 37) with a row stride of 74
    w_s = w_s[::2].contiguous()
    assert_equal(slimrt.ops.int8_linear(x, w_q, w_s, None), R.int8_linear(x, w_q, w_s))
    assert_close_fp32(slimrt.ops.int8_weight_only_linear(x, w_q, w_s, None), R.int8_weight_only_linear(x, w_q, w_s))


def test_linear_errors_name_the_argument():
    w_q, w_s = _weight(4, 8)
    with pytest.raises(ValueError, match="x has 9 features"):
        slimrt.ops.int8_linear(torch.randn(2, 9), w_q, w_s)
    with pytest.raises(TypeError, match="x has dtype float64"):
        slimrt.ops.int8_weight_only_linear(torch.randn(2, 8, dtype=torch.float64), w_q, w_s)


# --- lowrank_linear ------------------------------------------------------------------------------

@pytest.mark.parametrize("m", ODD)
@pytest.mark.parametrize("n,k,r", [(33, 67, 7), (17, 33, 17), (7, 17, 1), (20, 9, 300)])
def test_lowrank_linear_fp32(m, n, k, r):
    # r = 300 > 256 takes the two-launch path.
    x, u, v, bias = torch.randn(m, k), torch.randn(n, r), torch.randn(r, k), torch.randn(n)
    assert_close_fp32(slimrt.ops.lowrank_linear(x, u, v, bias), R.lowrank_linear(x, u, v, bias))


def test_lowrank_linear_batched_noncontiguous():
    x = torch.randn(2, 50, 9).transpose(1, 2)  # (2, 9, 50)
    u = torch.randn(10, 33)[::2]  # (5, 33) strided
    v = torch.randn(50, 33).T  # (33, 50) transposed
    assert_close_fp32(slimrt.ops.lowrank_linear(x, u, v, None), R.lowrank_linear(x, u, v))


@pytest.mark.parametrize("m,n,k,r", [(0, 3, 4, 2), (3, 0, 4, 2), (3, 4, 0, 2), (3, 4, 5, 0)])
def test_lowrank_linear_zero_size(m, n, k, r):
    x, u, v, bias = torch.randn(m, k), torch.randn(n, r), torch.randn(r, k), torch.randn(n)
    assert_close_fp32(slimrt.ops.lowrank_linear(x, u, v, bias), R.lowrank_linear(x, u, v, bias))


def test_lowrank_errors_name_the_argument():
    with pytest.raises(ValueError, match="u is"):
        slimrt.ops.lowrank_linear(torch.randn(2, 8), torch.randn(4, 3), torch.randn(2, 8))


# --- op contract ---------------------------------------------------------------------------------

def test_opcheck():
    x = torch.randn(3, 17)
    w_q, w_s = _weight(5, 17)
    cases = [
        ("quantize_per_token", (x,)),
        ("int8_gemm", (_int8(3, 17), w_q, torch.rand(3), w_s, torch.float32)),
        ("int8_linear", (x, w_q, w_s, torch.randn(5), None)),
        ("int8_weight_only_linear", (x, w_q, w_s, None, None)),
        ("lowrank_linear", (x, torch.randn(5, 4), torch.randn(4, 17), None)),
    ]
    from slimrt import attention

    m = attention.causal_mask(9, 20, 8)
    q, k, v = _qkv(1, 2, 1, 9, 20, 16)
    cases.append(("block_sparse_attention", (q, k, v, m.kv_num_blocks, m.kv_indices, 8, True, 0, 0, None, None)))
    for name, args in cases:
        torch.library.opcheck(getattr(torch.ops.slimrt, name).default, args)


# --- block_sparse_attention (slimrt.BlockMask) ------------------------------------------------------

def _qkv(b, hq, hkv, lq, lk, d, dtype=torch.float32):
    return (torch.randn(b, hq, lq, d).to(dtype), torch.randn(b, hkv, lk, d).to(dtype),
            torch.randn(b, hkv, lk, d).to(dtype))


def _attention_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    # fp32 online softmax (exp2) vs the reference's two-pass fp32 softmax.
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("lq,lk,bs", [(1, 33, 16), (17, 17, 16), (33, 67, 8), (67, 67, 32)])
def test_block_sparse_attention_masks(lq, lk, bs):
    from slimrt import attention

    q, k, v = _qkv(1, 4, 2, lq, lk, 16)
    for mask in (attention.causal_mask(lq, lk, bs), attention.sliding_window_mask(lq, lk, 9, 2, block_size=bs),
                 attention.full_mask(lq, lk, bs)):
        out = slimrt.ops.block_sparse_attention(q, k, v, mask)
        _attention_close(out, R.block_sparse_attention(q, k, v, mask.kv_num_blocks, mask.kv_indices, bs, mask.causal,
                                                       mask.window, mask.num_global, mask.token_mask, None))


def test_block_sparse_attention_token_mask_and_empty_rows():
    g = torch.Generator().manual_seed(1)
    tm = torch.rand(2, 1, 20, 27, generator=g) < 0.3
    tm[0, 0, 5] = False  # a query with no allowed key -> zeros
    mask = slimrt.BlockMask.from_token_mask(tm, 8)
    q, k, v = _qkv(2, 2, 1, 20, 27, 16)
    out = slimrt.ops.block_sparse_attention(q, k, v, mask, scale=0.3)
    ref = R.block_sparse_attention(q, k, v, mask.kv_num_blocks, mask.kv_indices, 8, False, 0, 0, mask.token_mask, 0.3)
    _attention_close(out, ref)
    assert (out[0, :, 5] == 0).all()


def test_block_sparse_attention_bad_layout_is_an_error():
    q, k, v = _qkv(1, 1, 1, 8, 16, 16)
    counts = torch.tensor([[[2]]], dtype=torch.int32)
    idx = torch.tensor([[[1, 0]]], dtype=torch.int32)  # not sorted
    with pytest.raises(ValueError, match="kv_indices"):
        torch.ops.slimrt.block_sparse_attention(q, k, v, counts, idx, 8, False, 0, 0, None, None)


# --- bf16 through the float GEMMs and attention (see the module docstring) -------------------------

@pytest.mark.parametrize("m", [1, 17])
def test_int8_weight_only_linear_bf16(m):
    x = torch.randn(m, 67).bfloat16()
    w_q, w_s = _weight(33, 67)
    bias = torch.randn(33).bfloat16()
    ref = R.int8_weight_only_linear(x, w_q, w_s, bias)
    # fp32 sums in another order, then one bf16 rounding each: at most 1 bf16 ulp apart.
    torch.testing.assert_close(slimrt.ops.int8_weight_only_linear(x, w_q, w_s, bias), ref, rtol=2**-7, atol=1e-5)


@pytest.mark.parametrize("r", [7, 300])
def test_lowrank_linear_bf16_within_2x_torch_error(r):
    x = torch.randn(17, 67).bfloat16()
    u, v = (torch.randn(33, r) / r**0.5).bfloat16(), (torch.randn(r, 67) / 8).bfloat16()
    oracle = (x.double() @ v.double().T) @ u.double().T
    torch_err = ((x @ v.T) @ u.T).double().sub(oracle).abs().max().item()
    err = slimrt.ops.lowrank_linear(x, u, v, None).double().sub(oracle).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, f"slimrt {err:.3e} vs torch bf16 {torch_err:.3e}"


def test_block_sparse_attention_bf16_within_2x_torch_error():
    from slimrt import attention

    q, k, v = _qkv(1, 4, 2, 40, 67, 32, torch.bfloat16)
    mask = attention.sliding_window_mask(40, 67, 20, 3, block_size=16)
    allowed = mask.to_dense(40, 67)
    kd, vd = k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    oracle = torch.nn.functional.scaled_dot_product_attention(q.double(), kd, vd, attn_mask=allowed)
    torch_bf16 = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed)
    torch_err = (torch_bf16.double() - oracle).abs().max().item()
    err = (slimrt.ops.block_sparse_attention(q, k, v, mask).double() - oracle).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, f"slimrt {err:.3e} vs torch bf16 {torch_err:.3e}"


# --- w4_linear ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,g,zp", [(1, 17, 67, 32, True), (7, 33, 130, 64, False), (17, 7, 257, 128, True),
                                        (33, 1, 33, 32, False), (65, 18, 96, 64, True)])
def test_w4_linear_exact(m, n, k, g, zp, dtype):
    from slimrt.ops import reference_w4 as W4

    gen = torch.Generator().manual_seed(m + n + k)
    q4, s, z = W4.quantize(torch.randn(n, k, generator=gen), g, zp)
    x = (torch.randn(m, k, generator=gen) * 2).to(dtype)
    x[0, :min(k, g)] = 0  # an all-zero group: scale 0
    bias = torch.randn(n, generator=gen)
    for b in (None, bias):
        assert_equal(slimrt.ops.w4_linear(x, q4, s, z, b, None, g), W4.w4_linear(x, q4, s, z, b, g))
