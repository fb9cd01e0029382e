"""lowrank_linear kernel (csrc/lowrank_matmul) against the PyTorch reference, on every ISA path.

Tolerances: fp32 is held to at most 2x PyTorch's own fp32 error against an fp64 oracle (plus a
1e-6 relative floor): the kernel sums in a different order, never in lower precision. bf16 keeps the
(M, R) intermediate and the sums in fp32 and rounds y once, so it may differ from the reference by one
bf16 rounding step (at most 2^-7 relative) where the two fp32 sums straddle a rounding boundary.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import slimrt
from slimrt import _native
from slimrt.ops import reference

pytestmark = pytest.mark.skipif(not _native.available(), reason="native extension not built")

ISAS = _native.load().available_isas() if _native.available() else ["scalar"]
# (M, K, R, N): M=1,2 take the decode path, 3..64 the column-parallel path, >64 the row-tile path.
SHAPES = [
    (1, 7, 1, 7), (1, 67, 17, 257), (2, 33, 7, 17), (3, 17, 33, 67), (7, 257, 33, 1),
    (17, 67, 1, 33), (64, 33, 17, 67), (65, 17, 7, 33), (130, 300, 40, 70), (1, 1025, 67, 17),
    (33, 1025, 130, 257),
]


@pytest.fixture(params=ISAS)
def isa(request):
    before = _native.load().active_isa()
    _native.set_isa(request.param)
    yield request.param
    _native.set_isa(before)


def _factors(m, k, r, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    u = torch.randn(n, r, generator=g).to(dtype)
    v = (torch.randn(r, k, generator=g) / max(k, 1) ** 0.5).to(dtype)
    b = torch.randn(n, generator=g)
    return x, u, v, b


def _oracle64(x, u, v, b):
    y = (x.double() @ v.double().T) @ u.double().T
    return y if b is None else y + b.double()


def _assert_fp32_close(y, x, u, v, b):
    ref64 = _oracle64(x, u, v, b)
    err = (y.double() - ref64).abs()
    err_torch = (reference.lowrank_linear(x, u, v, b).double() - ref64).abs().max().item()
    bound = 2 * err_torch + 1e-6 * ref64.abs().max().item() + 1e-30
    assert err.max().item() <= bound, (
        f"max err {err.max().item():.3g} > bound {bound:.3g} (torch fp32 err {err_torch:.3g}); "
        f"worst at {divmod(int(err.argmax()), y.shape[-1])}")


def _assert_bf16_close(y, ref):
    diff = (y.float() - ref.float()).abs()
    # one bf16 step is at most 2^-7 relative; the atol covers fp32 reordering where the sum cancels.
    tol = ref.float().abs() * 2.0 ** -7 + 1e-5 * ref.float().abs().max().item()
    bad = diff > tol
    assert not bool(bad.any()), f"{int(bad.sum())} elements off by more than one bf16 step, worst {diff.max().item():.3g}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [False, True])
def test_fp32_matches_reference(isa, shape, with_bias):
    x, u, v, b = _factors(*shape, torch.float32)
    b = b if with_bias else None
    _assert_fp32_close(slimrt.ops.lowrank_linear(x, u, v, b), x, u, v, b)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf16_matches_reference(isa, shape):
    x, u, v, b = _factors(*shape, torch.bfloat16)
    y = slimrt.ops.lowrank_linear(x, u, v, b.bfloat16())
    assert y.dtype == torch.bfloat16
    _assert_bf16_close(y, reference.lowrank_linear(x, u, v, b.bfloat16()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factor_layouts_give_the_same_result(isa, dtype):
    # Row-major factors are copied to the kernel layout per call; transposed views are used in place.
    x, u, v, b = _factors(9, 67, 17, 33, dtype)
    y_rowmajor = slimrt.ops.lowrank_linear(x, u, v, b)
    y_kernel = slimrt.ops.lowrank_linear(x, u.t().contiguous().t(), v.t().contiguous().t(), b)
    torch.testing.assert_close(y_rowmajor, y_kernel, rtol=0, atol=0)


def test_non_contiguous_inputs(isa):
    x, u, v, b = _factors(40, 67, 17, 33, torch.float32)
    x_wide = torch.randn(80, 3 * 67)[::2, 5:5 + 67]  # sliced rows, non-zero storage offset
    x_t = torch.randn(67, 40).t()  # transposed: unit stride along M
    x_exp = torch.randn(1, 67).expand(40, 67)  # stride 0 along M
    x_3d = torch.randn(4, 10, 67)
    u_sl = torch.randn(33, 40)[:, 3:20]  # (33, 17) with row stride 40
    v_sl = torch.randn(17, 2, 67)[:, 1]  # (17, 67) with row stride 134
    for xx in (x_wide, x_t, x_exp, x_3d):
        _assert_fp32_close(slimrt.ops.lowrank_linear(xx, u, v, b).reshape(-1, 33), xx.reshape(-1, 67), u, v, b)
    _assert_fp32_close(slimrt.ops.lowrank_linear(x, u_sl, v_sl, b), x, u_sl, v_sl, b)
    assert slimrt.ops.lowrank_linear(x_3d, u, v, b).shape == (4, 10, 33)


@pytest.mark.parametrize("mkrn", [(0, 7, 3, 5), (4, 7, 3, 0), (4, 0, 3, 5), (4, 7, 0, 5), (0, 0, 0, 0)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_zero_sizes(isa, mkrn, with_bias):
    m, k, r, n = mkrn
    x, u, v, b = _factors(m, k, r, n, torch.float32)
    b = b if with_bias else None
    y = slimrt.ops.lowrank_linear(x, u, v, b)
    assert y.shape == (m, n)
    expected = torch.zeros(m, n) if b is None else b.expand(m, n)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_decode_row_equals_batched_row(isa):
    x, u, v, b = _factors(130, 257, 33, 67, torch.float32)
    y = slimrt.ops.lowrank_linear(x, u, v, b)
    for i in (0, 64, 129):
        y1 = slimrt.ops.lowrank_linear(x[i:i + 1], u, v, b)
        torch.testing.assert_close(y1[0], y[i], rtol=1e-6, atol=1e-6)


def test_thread_count_does_not_change_bits(isa):
    x, u, v, b = _factors(200, 300, 40, 70, torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = slimrt.ops.lowrank_linear(x, u, v, b)
        torch.set_num_threads(max(2, before))
        y2 = slimrt.ops.lowrank_linear(x, u, v, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)


def test_nan_row_stays_nan_and_zero_row_gives_bias(isa):
    x, u, v, b = _factors(5, 33, 7, 17, torch.float32)
    x[1, 3] = float("nan")
    x[2] = 0
    for dtype in (torch.float32, torch.bfloat16):
        y = slimrt.ops.lowrank_linear(x.to(dtype), u.to(dtype), v.to(dtype), b).float()
        assert torch.isnan(y[1]).all(), y[1]
        assert not torch.isnan(y[[0, 2, 3, 4]]).any()
        torch.testing.assert_close(y[2], b.to(dtype).float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x, u, v, b = _factors(5, 17, 7, 33, dtype)
    torch.library.opcheck(torch.ops.slimrt.lowrank_linear.default, (x, u, v, b.to(dtype)))
    torch.library.opcheck(torch.ops.slimrt.lowrank_linear.default, (x, u, v, None))


def test_bad_inputs_are_clear_errors():
    x, u, v, b = _factors(3, 17, 7, 33, torch.float32)
    op = slimrt.ops.lowrank_linear
    with pytest.raises(TypeError, match="x has dtype float64"):
        op(x.double(), u, v)
    with pytest.raises(TypeError, match="u has dtype bfloat16"):
        op(x, u.bfloat16(), v)
    with pytest.raises(TypeError, match="v has dtype float16"):
        op(x, u, v.half())
    with pytest.raises(ValueError, match="v is"):
        op(x[:, :16], u, v)
    with pytest.raises(ValueError, match="u is"):
        op(x, u[:, :6], v)
    with pytest.raises(ValueError, match="bias has shape"):
        op(x, u, v, b[:5])
    with pytest.raises(ValueError, match="u must be 2-D"):
        op(x, u[0], v)
    with pytest.raises(ValueError, match="x must have at least 1 dims"):
        op(x[0, 0], u, v)


def test_native_entry_rejects_bad_strides():
    c = _native.load()
    y = torch.empty(2, 3)
    with pytest.raises(ValueError, match="x row stride"):
        c.lowrank_matmul(1, 2, 1, 4, 1, 3, 0, y.data_ptr(), 3, 0, 2, 5, 4, 3, 1)
    with pytest.raises(ValueError, match="negative size"):
        c.lowrank_matmul(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="dtype code"):
        c.lowrank_matmul(0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 1, 1, 1, 1)


@given(m=st.integers(1, 80), k=st.integers(1, 96), r=st.integers(1, 40), n=st.integers(1, 80),
       bf16=st.booleans())
def test_random_shapes(m, k, r, n, bf16):
    dtype = torch.bfloat16 if bf16 else torch.float32
    x, u, v, b = _factors(m, k, r, n, dtype, seed=m * 7 + k)
    y = slimrt.ops.lowrank_linear(x, u, v, b)
    if bf16:
        _assert_bf16_close(y, reference.lowrank_linear(x, u, v, b))
    else:
        _assert_fp32_close(y, x, u, v, b)


def test_requires_grad_is_refused_outside_no_grad():
    x, u, v, b = _factors(3, 17, 7, 33, torch.float32)
    with pytest.raises(RuntimeError, match="inference-only"):
        slimrt.ops.lowrank_linear(x.requires_grad_(), u, v, b)
    with torch.no_grad():
        assert slimrt.ops.lowrank_linear(x, u, v, b).shape == (3, 33)


def test_concurrent_calls_match_serial_calls():
    from concurrent.futures import ThreadPoolExecutor

    cases = [_factors(m, 67, 17, 33, torch.float32, seed=m) for m in (1, 9, 40, 130)]
    serial = [slimrt.ops.lowrank_linear(x, u, v, b) for x, u, v, b in cases]
    with ThreadPoolExecutor(4) as ex:
        for _ in range(5):
            got = list(ex.map(lambda c: slimrt.ops.lowrank_linear(*c), cases))
            for g, s in zip(got, serial):
                assert torch.equal(g, s)
