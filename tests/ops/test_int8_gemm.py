"""int8 GEMM family: native kernels against ops/reference.py (the spec), on every ISA path.

Integer results and the fp32/bf16 epilogues are compared bit for bit: the kernels use the
reference's op order (acc * a_scale * b_scale + bias, round-half-even bf16). The weight-only path
accumulates x * w in fp32 in another order than torch's matmul, so it gets an error bound scaled by
sum |x| |w| (a few ulps of the magnitude summed), not bit equality.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bitwise import assert_same_bits
from slimrt import _native, ops
from slimrt.ops import reference
from slimrt.nn import Int8Linear
from slimrt.ops import reference as R

pytestmark = pytest.mark.skipif(not _native.available(), reason="native extension not built")

ISAS = _native.load().available_isas() if _native.available() else []
# Where the CPU has AMX, the avx512 path runs its int8 GEMM on AMX tiles (from 8 rows) or on VNNI:
# every test that takes `isa` runs both ("avx512" with AMX off, "avx512+amx").
AMX = _native.available() and bool(_native.load().amx_available())
PATHS = [(i, False) for i in ISAS] + ([("avx512", True)] if AMX else [])
SIZES = (1, 7, 17, 33, 67, 257, 1025)
# (M, K, N): every odd size appears in each position; K = 496 / 67 and N = 33 are tile-tail cases.
GEMM_SHAPES = [(1, 1, 1), (1, 496, 33), (7, 67, 17), (17, 33, 7), (33, 257, 67), (67, 7, 257), (257, 17, 33),
               (2, 1025, 257), (1025, 33, 17), (13, 496, 1025), (6, 64, 64), (12, 256, 130)]


@pytest.fixture(params=PATHS, ids=[i + ("+amx" if amx else "") for i, amx in PATHS])
def isa(request):
    ext = _native.load()
    before, amx_before = ext.active_isa(), ext.amx_enabled()
    name, amx = request.param
    ext.set_isa(name)
    if AMX:
        ext.set_amx(amx)
    yield name
    ext.set_isa(before)
    if AMX:
        ext.set_amx(amx_before)


def _rand_i8(*shape: int, gen: torch.Generator | None = None) -> torch.Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)


# ---- int8_gemm: exact int32 and bit-exact float epilogue ------------------------------------------

@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_gemm_matches_reference_exactly(isa, m, k, n):
    g = torch.Generator().manual_seed(m * 10007 + k * 101 + n)
    a, b = _rand_i8(m, k, gen=g), _rand_i8(n, k, gen=g)
    assert_same_bits(ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32),
                  f"int32 {isa} {(m, k, n)}")
    a_s, b_s = torch.rand(m, generator=g) + 0.01, torch.rand(n, generator=g) + 0.01
    for dt in (torch.float32, torch.bfloat16):
        assert_same_bits(ops.int8_gemm(a, b, a_s, b_s, dt), R.int8_gemm(a, b, a_s, b_s, dt), f"{dt} {isa} {(m, k, n)}")


@pytest.mark.parametrize("k", [4096, 131071])
@pytest.mark.parametrize("m", [3, 20])  # 20 rows: the AMX kernel where there is one
def test_gemm_worst_case_operands_are_exact(isa, k, m):
    # -128 * -128 summed over K: 16384 * K, no int16 saturation (the AVX2 vpmaddubsw trap) and no
    # overflow in the u8 (a + 128) VNNI / AMX form; 131071 * 16384 is just below 2^31.
    a = torch.full((m, k), -128, dtype=torch.int8)
    b = torch.full((17, k), -128, dtype=torch.int8)
    b[1] = 127
    b[2, ::2] = 127
    out = ops.int8_gemm(a, b, None, None, torch.int32)
    assert_same_bits(out, R.int8_gemm(a, b, None, None, torch.int32), f"extremes {isa} K={k}")
    assert int(out[0, 0]) == 16384 * k


def test_packed_layout_is_isa_independent_and_shared(isa):
    w = _rand_i8(33, 67, gen=torch.Generator().manual_seed(3))
    packed = ops.int8_pack_weight(w)
    ext = _native.load()
    assert packed.dtype == torch.int8 and packed.dim() == 1 and packed.numel() == ext.int8_packed_size(33, 67)
    x = torch.randn(5, 67)
    s = torch.rand(33) + 0.1
    want = R.int8_linear(x, w, s, None)
    before = ext.active_isa()
    try:
        for other in ISAS:  # one blob, every path
            ext.set_isa(other)
            assert torch.equal(ops.int8_pack_weight(w), packed), f"packing under {other} differs"
            assert_same_bits(ops.int8_linear(x, w, s, None, packed), want, f"packed under {isa}, run under {other}")
    finally:
        ext.set_isa(before)


# ---- quantize_per_token ------------------------------------------------------------------------

@pytest.mark.parametrize("k", SIZES + (496,))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_per_token_bit_exact(isa, k, dtype):
    g = torch.Generator().manual_seed(k)
    x = (torch.randn(9, k, generator=g) * torch.logspace(-3, 3, 9).unsqueeze(1)).to(dtype)
    x[1] = 0  # all-zero row
    if k > 2:
        x[2, 1] = float("nan")
        x[3, k // 2] = float("inf")
        x[4, -1] = float("-inf")
        x[5, 0] = 1e-40 if dtype == torch.float32 else 0  # subnormal
    q, s = ops.quantize_per_token(x)
    q_ref, s_ref = R.quantize_per_token(x)
    assert_same_bits(q, q_ref, f"q {isa} k={k} {dtype}")
    assert_same_bits(s, s_ref, f"scale {isa} k={k} {dtype}")
    if k > 2:
        assert s[2].isnan() and s[3].isnan() and s[4].isnan() and not q[2:5].any()
    assert s[1] == 0 and not q[1].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_tiny_rows_stay_in_range(isa, dtype):
    # amax below 127 / FLT_MAX makes 127 / amax overflow to +inf: nonzero values must come out +-127
    # and zeros 0 (never the integer-indefinite -128, never 0 * inf = NaN in a cast); K = 70 runs
    # both the 64-wide vector loop and the tail.
    x = torch.zeros(3, 70)
    x[0, 0], x[0, 1], x[0, 63], x[0, 65] = 1e-37, -5e-38, 1e-37, -1e-37
    x[1, 5] = 2e-39  # subnormal amax: 1 / amax alone already overflows
    x[2, :] = 3e-37
    x = x.to(dtype)
    q, s = ops.quantize_per_token(x)
    q_ref, s_ref = R.quantize_per_token(x)
    assert_same_bits(q, q_ref, f"q {isa} {dtype}")
    assert_same_bits(s, s_ref, f"scale {isa} {dtype}")
    nz = x.float() != 0
    assert torch.equal(q[nz], torch.where(x.float()[nz] > 0, 127, -127).to(torch.int8)) and not q[~nz].any()
    w = _rand_i8(20, 70)
    ws = torch.rand(20) + 0.1
    assert_same_bits(ops.int8_linear(x, w, ws, None, ops.int8_pack_weight(w)), R.int8_linear(x, w, ws, None),
                  f"linear {isa} {dtype}")


def test_quantize_rounds_half_to_even(isa):
    # amax 127 -> inv 1: x * inv lands exactly on .5 and must round to even, as torch.round.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])
    q, _ = ops.quantize_per_token(x)
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]], q.tolist()


# ---- int8_linear (W8A8) and int8_weight_only_linear -----------------------------------------------

def _w8_bound(x: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    # fp32 summation-order error: a few ulps of sum_k |x| |w| * scale (K terms), plus bf16 output rounding.
    mag = (x.float().abs().reshape(-1, x.shape[-1]) @ w_q.float().abs().T) * w_s
    return (mag * 1e-5 + 1e-6).reshape(*x.shape[:-1], w_q.shape[0])


@pytest.mark.parametrize("m,k,n", [(1, 496, 33), (7, 67, 17), (33, 257, 67), (1, 1025, 257), (5, 17, 1025)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_linear_paths_match_reference(isa, m, k, n, dtype, packed):
    g = torch.Generator().manual_seed(m + k + n)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = _rand_i8(n, k, gen=g)
    s = torch.rand(n, generator=g) * 0.01 + 1e-4
    bias = torch.randn(n, generator=g)
    wp = ops.int8_pack_weight(w) if packed else None
    assert_same_bits(ops.int8_linear(x, w, s, bias, wp), R.int8_linear(x, w, s, bias), f"w8a8 {isa} {dtype}")
    y = ops.int8_weight_only_linear(x, w, s, bias, wp)
    want = R.int8_weight_only_linear(x, w, s, bias)
    assert y.dtype == dtype and y.shape == want.shape
    err = (y.float() - want.float()).abs()
    bound = _w8_bound(x, w, s) + (want.float().abs() * 2**-7 if dtype == torch.bfloat16 else 0)
    assert bool((err <= bound).all()), f"weight-only {isa} {dtype}: worst excess {(err - bound).max().item():.3g}"


# ---- perf helper: large-M tiling (row chunks, k blocks, per-thread fused quantization) -------------

# (M, K, N, threads): the AVX-512 partitions. 203 x 1100: rows split per thread, one k block.
# 300 x 4300: rows split (3 threads: uneven thirds), two row chunks per thread (132 rows fit the
# L2 budget at K = 4300) and two k blocks with int32 partial sums. 67 x 4300 x 520: few rows and a
# weight beyond L2, so the threads split the 33 panels (partial 64-column tiles at the split) and
# fill one shared activation buffer. 7 x 100 x 200: too few rows to split, panels split.
# 300 x 200 x 20 on 3 threads: one 32-column block, so the AMX path splits its 32-row blocks in thirds.
# 2100 rows: the AMX path runs more than 2048 rows as slices (its own operand buffer per slice; the
# Inf row sits in the second slice).
@pytest.mark.parametrize("m,k,n,threads", [(203, 1100, 70, 1), (203, 1100, 70, 2), (300, 4300, 70, 2),
                                           (300, 4300, 70, 3), (67, 4300, 520, 2), (67, 4300, 520, 3),
                                           (7, 100, 200, 2), (300, 200, 20, 3), (2100, 72, 40, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_row_chunks_and_k_blocks_are_exact(isa, m, k, n, threads, dtype):
    # Rows of NaN, Inf and zeros sit in later chunks. The fused AVX-512 linear quantizes the
    # activations per chunk (or into a shared buffer): it must match the reference bit for bit.
    g = torch.Generator().manual_seed(threads * 7 + m)
    x = torch.randn(m, k, generator=g)
    x[m // 2] = 0.0
    x[(3 * m) // 4, 3] = float("nan")
    x[m - 2, 7] = float("inf")
    x = x.to(dtype)
    w = _rand_i8(n, k, gen=g)
    s = torch.rand(n, generator=g) * 0.01 + 1e-4
    bias = torch.randn(n, generator=g)
    a = _rand_i8(m, k, gen=g)
    a_s = torch.rand(m, generator=g) + 0.01
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wp = ops.int8_pack_weight(w)
        assert_same_bits(ops.int8_linear(x, w, s, bias, wp), R.int8_linear(x, w, s, bias), f"w8a8 {isa} {dtype}")
        assert_same_bits(ops.int8_linear(x, w, s, None, None), R.int8_linear(x, w, s, None), f"w8a8 {isa} unpacked")
        assert_same_bits(ops.int8_gemm(a, w, None, None, torch.int32), R.int8_gemm(a, w, None, None, torch.int32),
                      f"gemm {isa}")
        assert_same_bits(ops.int8_gemm(a, w, a_s, s, dtype), R.int8_gemm(a, w, a_s, s, dtype), f"gemm {isa} {dtype}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "offset", "3d"])
def test_noncontiguous_inputs(isa, layout):
    g = torch.Generator().manual_seed(7)
    k, n = 67, 33
    base = torch.randn(40, 2 * k, generator=g)
    if layout == "transposed":
        x = torch.randn(k, 9, generator=g).t()
    elif layout == "sliced":
        x = base[::3, ::2]
    elif layout == "expanded":
        x = torch.randn(1, k, generator=g).expand(6, k)
    elif layout == "offset":
        x = base[5:12, 3:3 + k]
    else:
        x = torch.randn(2, 3, 2 * k, generator=g)[..., ::2]
    w_full = _rand_i8(2 * n, k + 5, gen=g)
    w = w_full[::2, 5:]  # sliced weight with a storage offset
    s = (torch.rand(2 * n, generator=g) + 0.1)[::2]  # strided scale and bias too
    bias = torch.randn(n, 3, generator=g)[:, 1]
    assert_same_bits(ops.int8_linear(x, w, s, bias, None),
                  R.int8_linear(x.contiguous(), w.contiguous(), s.contiguous(), bias.contiguous()), f"w8a8 {layout}")
    err = (ops.int8_weight_only_linear(x, w, s, bias, None)
           - R.int8_weight_only_linear(x.contiguous(), w.contiguous(), s, bias)).abs()
    assert bool((err <= _w8_bound(x, w, s)).all()), f"weight-only {layout}: max error {err.max().item():.3g}"
    a = _rand_i8(k, 9, gen=g).t() if layout == "transposed" else _rand_i8(1, k, gen=g).expand(4, k)
    bt = _rand_i8(k, n, gen=g).t()
    assert_same_bits(ops.int8_gemm(a, bt, None, None, torch.int32), R.int8_gemm(a, bt, None, None, torch.int32),
                  f"gemm {layout}")
    assert_same_bits(ops.int8_gemm(a, w, None, None, torch.int32), R.int8_gemm(a, w, None, None, torch.int32),
                  f"gemm sliced b {layout}")
    q, sc = ops.quantize_per_token(x)
    q2, sc2 = R.quantize_per_token(x)
    assert_same_bits(q, q2, f"quantize {layout}")


@pytest.mark.parametrize("m,k,n", [(0, 8, 5), (3, 0, 5), (3, 8, 0), (0, 0, 0)])
def test_zero_size(isa, m, k, n):
    a, b = torch.zeros(m, k, dtype=torch.int8), torch.ones(n, k, dtype=torch.int8)
    out = ops.int8_gemm(a, b, None, None, torch.int32)
    assert out.shape == (m, n) and not out.any()
    x = torch.randn(m, k)
    s = torch.ones(n)
    bias = torch.arange(n, dtype=torch.float32)
    for fn in (ops.int8_linear, ops.int8_weight_only_linear):
        y = fn(x, b, s, bias, ops.int8_pack_weight(b))
        assert y.shape == (m, n)
        assert torch.equal(y, bias.expand(m, n)), f"{fn.__name__}: K = 0 must give the bias"
    q, sc = ops.quantize_per_token(x)
    assert q.shape == (m, k) and sc.shape == (m,)


def test_nan_inf_rows_and_zero_row(isa):
    w = _rand_i8(33, 67)
    s = torch.rand(33) + 0.1
    bias = torch.randn(33)
    x = torch.randn(4, 67)
    x[0] = 0
    x[1, 5] = float("nan")
    x[2, 9] = float("inf")
    for fn in (ops.int8_linear, ops.int8_weight_only_linear):
        y = fn(x, w, s, bias, ops.int8_pack_weight(w))
        assert torch.equal(y[0], bias), f"{fn.__name__}: an all-zero row must give the bias"
        assert y[1].isnan().all(), f"{fn.__name__}: a NaN row must give NaN"
        if fn is ops.int8_linear:  # dynamic quantization turns an Inf row into NaN (scale NaN)
            assert y[2].isnan().all(), "int8_linear: an Inf row must give NaN"
        else:  # float activations: Inf propagates as in the reference matmul
            assert not y[2].isfinite().any(), "int8_weight_only_linear: an Inf row must stay non-finite"
        assert y[3].isfinite().all()


# ---- errors name the argument ----------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    a, b = torch.zeros(4, 8, dtype=torch.int8), torch.zeros(5, 8, dtype=torch.int8)
    s4, s5 = torch.ones(4), torch.ones(5)
    cases = [
        (lambda: ops.int8_gemm(a.float(), b, s4, s5), TypeError, "a has dtype float32"),
        (lambda: ops.int8_gemm(a, b.to(torch.uint8), s4, s5), TypeError, "b has dtype uint8"),
        (lambda: ops.int8_gemm(a[0], b, s4, s5), ValueError, "a must be 2-D"),
        (lambda: ops.int8_gemm(a, b[:, :7], s4, s5), ValueError, "K differs"),
        (lambda: ops.int8_gemm(a, b, s5, s5), ValueError, "a_scale has shape"),
        (lambda: ops.int8_gemm(a, b, s4, s5.double()), TypeError, "b_scale has dtype"),
        (lambda: ops.int8_gemm(a, b, s4, s5, torch.float64), TypeError, "out_dtype"),
        (lambda: ops.int8_linear(torch.randn(3, 8).half(), b, s5), TypeError, "x has dtype float16"),
        (lambda: ops.int8_linear(torch.randn(3, 7), b, s5), ValueError, "x has 7 features"),
        (lambda: ops.int8_linear(torch.randn(3, 8), b, s4), ValueError, "w_scale has shape"),
        (lambda: ops.int8_linear(torch.randn(3, 8), b.float(), s5), TypeError, "w_q has dtype"),
        (lambda: ops.int8_linear(torch.randn(3, 8), b, s5, torch.ones(4)), ValueError, "bias has shape"),
        (lambda: ops.int8_linear(torch.randn(3, 8), b, s5, None, torch.zeros(7, dtype=torch.int8)), ValueError,
         "w_packed has 7 bytes"),
        (lambda: ops.int8_weight_only_linear(torch.randn(3, 8), b, s5, None, torch.zeros(9)), TypeError, "w_packed"),
        (lambda: ops.int8_pack_weight(b.float()), TypeError, "w_q has dtype"),
        (lambda: ops.int8_pack_weight(b[0]), ValueError, "w_q must be 2-D"),
        (lambda: ops.quantize_per_token(torch.zeros(3, 4, dtype=torch.float64)), TypeError, "x has dtype float64"),
    ]
    for fn, exc, text in cases:
        with pytest.raises(exc, match=text):
            fn()


def test_packed_blob_of_another_weight_is_refused():
    w1, w2 = torch.zeros(16, 4, dtype=torch.int8), torch.zeros(16, 3, dtype=torch.int8)  # same packed size
    assert ops.int8_pack_weight(w1).numel() == ops.int8_pack_weight(w2).numel()
    for fn in (ops.int8_linear, ops.int8_weight_only_linear):
        with pytest.raises(ValueError, match="w_packed is not a packed"):
            fn(torch.randn(2, 3), w2, torch.ones(16), None, ops.int8_pack_weight(w1))


@pytest.mark.parametrize("op", ["int8_linear", "int8_weight_only_linear"])
def test_pack_of_another_weight_of_the_same_shape_is_refused(isa, op):
    # Same (N, K), so the header matches: the pack's content must be checked. Before the check the
    # vector paths ran on the other weight (max difference 43) while the scalar path used w_q.
    g = torch.Generator().manual_seed(5)
    fn = getattr(ops, op)
    x, s = torch.randn(3, 67, generator=g), torch.rand(33, generator=g) + 0.1
    for n, k in ((33, 67), (1, 1), (16, 4)):
        w, other = _rand_i8(n, k, gen=g), _rand_i8(n, k, gen=g)
        while torch.equal(w, other):  # (1, 1): the two could be equal by chance
            other = _rand_i8(n, k, gen=g)
        xk, sn = x[:, :k].contiguous(), s[:n].contiguous()
        with pytest.raises(ValueError, match=r"w_packed was not packed from this w_q: w_q\[\d+, \d+\] = -?\d+ "
                                             r"but the pack holds -?\d+; repack it"):
            out = fn(xk, w, sn, None, ops.int8_pack_weight(other))
            pytest.fail(f"{op} {isa} ({n}, {k}): accepted another weight's pack, max |diff| "
                        f"{(out - fn(xk, w, sn, None, None)).abs().max().item()}")
        assert_same_bits(fn(xk, w, sn, None, ops.int8_pack_weight(w.clone())), fn(xk, w, sn, None, None),
                      f"{op} {isa}: a pack of an equal copy of w_q is accepted")


def test_sampled_check_covers_every_row_of_a_small_weight():
    # The check compares samples, not every element; on a weight of up to 16 rows they fall in every
    # row (two columns of each), so a change confined to one row is caught in some column of it.
    w = _rand_i8(16, 4, gen=torch.Generator().manual_seed(6))
    x, s = torch.randn(2, 4), torch.ones(16)
    caught_rows = set()
    for n in range(16):
        for k in range(4):
            other = w.clone()
            other[n, k] = int(w[n, k]) + 1 if int(w[n, k]) < 127 else 0
            try:
                ops.int8_linear(x, w, s, None, ops.int8_pack_weight(other))
            except ValueError:
                caught_rows.add(n)
    assert caught_rows == set(range(16)), f"rows whose changes were never caught: {sorted(set(range(16)) - caught_rows)}"


@pytest.mark.parametrize("mode", ["w8a8", "w8"])
def test_module_repacks_after_w_q_changes_in_place(mode):
    # Every ISA path must agree after w_q changes: the vector paths read the pack, the scalar path
    # w_q, so a pack made before the change gave ISA-dependent answers.
    torch.manual_seed(7)
    mod = Int8Linear.from_linear(torch.nn.Linear(67, 33), mode=mode)
    other = Int8Linear.from_linear(torch.nn.Linear(67, 33))
    x = torch.randn(5, 67)
    ref = R.int8_linear if mode == "w8a8" else R.int8_weight_only_linear
    ext = _native.load()
    before = ext.active_isa()
    edits = [lambda: mod.w_q.copy_(other.w_q), lambda: mod.w_q[3].fill_(-7), lambda: mod.w_q.mul_(-1)]
    try:
        with torch.no_grad():
            for step, edit in enumerate(edits):
                mod(x)  # packed and used before the change
                edit()
                for isa_name in ISAS:
                    ext.set_isa(isa_name)
                    got = mod(x)
                    if mode == "w8a8":
                        assert_same_bits(got, ref(x, mod.w_q, mod.w_scale, mod.bias), f"{mode} edit {step} {isa_name}")
                    else:
                        want = ref(x, mod.w_q, mod.w_scale, mod.bias)
                        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), \
                            f"{mode} edit {step} {isa_name}: max |diff| {(got - want).abs().max().item()}"
    finally:
        ext.set_isa(before)
    assert torch.equal(mod.w_packed, ops.int8_pack_weight(mod.w_q))


def test_current_pack_follows_an_in_place_change():
    # The native decode step takes the module's pack through current_pack: a pack made before an
    # in-place change of w_q must not reach it.
    torch.manual_seed(9)
    mod = Int8Linear.from_linear(torch.nn.Linear(40, 24), mode="w8")
    with torch.no_grad():
        mod(torch.randn(2, 40))
        mod.w_q.mul_(-1)
    assert torch.equal(mod.current_pack(), ops.int8_pack_weight(mod.w_q))


def test_module_repacks_when_w_q_is_replaced():
    torch.manual_seed(8)
    mod = Int8Linear.from_linear(torch.nn.Linear(40, 24))
    x = torch.randn(2, 40)
    with torch.no_grad():
        mod(x)
        mod.w_q = torch.randint(-127, 128, (24, 40), dtype=torch.int8)  # a new tensor, no in-place write
        assert_same_bits(mod(x), R.int8_linear(x, mod.w_q, mod.w_scale, mod.bias), "after replacing w_q")


def test_tensors_on_another_device_are_refused():
    from slimrt.ops import cpu

    w = torch.zeros(5, 8, dtype=torch.int8, device="meta")
    with pytest.raises(ValueError, match="w_q is on meta"):
        cpu.int8_linear(torch.randn(2, 8), w, torch.ones(5), None, None)


def test_requires_grad_is_refused():
    w = torch.zeros(5, 8, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="x requires grad"):
        ops.int8_linear(torch.randn(2, 8, requires_grad=True), w, torch.ones(5))
    with torch.no_grad():
        ops.int8_linear(torch.randn(2, 8, requires_grad=True), w, torch.ones(5))


# ---- op contract and properties ----------------------------------------------------------------------

def test_opcheck_every_op():
    g = torch.Generator().manual_seed(0)
    a, b = _rand_i8(5, 67, gen=g), _rand_i8(33, 67, gen=g)
    a_s, b_s = torch.rand(5) + 0.1, torch.rand(33) + 0.1
    x = torch.randn(2, 3, 67)
    wp = ops.int8_pack_weight(b)
    calls = [
        (torch.ops.slimrt.quantize_per_token.default, (x,)),
        (torch.ops.slimrt.quantize_per_channel.default, (torch.randn(33, 67),)),
        (torch.ops.slimrt.int8_gemm.default, (a, b, a_s, b_s, torch.float32)),
        (torch.ops.slimrt.int8_gemm.default, (a, b, None, None, torch.int32)),
        (torch.ops.slimrt.int8_pack_weight.default, (b,)),
        (torch.ops.slimrt.int8_linear.default, (x, b, b_s, torch.randn(33), wp)),
        (torch.ops.slimrt.int8_linear.default, (x.bfloat16(), b, b_s, None, None)),
        (torch.ops.slimrt.int8_linear.default, (x, b, b_s, torch.randn(33), wp, "gelu")),
        (torch.ops.slimrt.int8_weight_only_linear.default, (x, b, b_s, torch.randn(33), wp)),
    ]
    for op, args in calls:
        torch.library.opcheck(op, args)


@given(m=st.integers(0, 40), k=st.integers(0, 300), n=st.integers(0, 70), seed=st.integers(0, 2**16))
def test_random_shapes_every_isa(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = _rand_i8(m, k, gen=g), _rand_i8(n, k, gen=g)
    x = torch.randn(m, k, generator=g)
    s = torch.rand(n, generator=g) + 0.1
    want_i32, want_lin = R.int8_gemm(a, b, None, None, torch.int32), R.int8_linear(x, b, s, None)
    ext = _native.load()
    before, amx_before = ext.active_isa(), ext.amx_enabled()
    try:
        for isa, amx in PATHS:
            ext.set_isa(isa)
            if AMX:
                ext.set_amx(amx)
            assert_same_bits(ops.int8_gemm(a, b, None, None, torch.int32), want_i32, f"gemm {isa} amx={amx}")
            assert_same_bits(ops.int8_linear(x, b, s, None, ops.int8_pack_weight(b)), want_lin, f"linear {isa} amx={amx}")
    finally:
        ext.set_isa(before)
        if AMX:
            ext.set_amx(amx_before)


_GUARD_CODE = r"""
import ctypes, mmap, sys, torch
from slimrt import _native
from slimrt.ops import reference as R
ext = _native.load()
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
paths = [(i, False) for i in ext.available_isas() if i != "scalar"] + ([("avx512", True)] if ext.amx_available() else [])
for k in (4, 68, 132, 196):        # k_pad % 64 == 4: the AMX path's last 64-k tile reads furthest past a panel
    for n in (16, 32, 48):         # one panel, a pair, a pair + a single panel
        m = 40
        g = torch.Generator().manual_seed(k * 100 + n)
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        size = ext.int8_packed_size(n, k)
        total = -(-size // page) * page + page
        buf = mmap.mmap(-1, total)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert libc.mprotect(base + total - page, page, 0) == 0  # PROT_NONE guard page right after the blob
        blob = base + total - page - size
        ext.int8_pack_weight(w.data_ptr(), k, n, k, blob, 1)
        want = R.int8_gemm(a, w, None, None, torch.int32)
        for isa, amx in paths:
            ext.set_isa(isa)
            if ext.amx_available():
                ext.set_amx(amx)
            out = torch.empty(m, n, dtype=torch.int32)
            ext.int8_gemm(a.data_ptr(), k, w.data_ptr(), k, blob, 0, 0, 0, out.data_ptr(), 2, n, m, n, k, 2)
            assert torch.equal(out, want), (isa, amx, k, n)
print("ok")
"""


def test_packed_weight_is_never_read_past_its_end():
    # ASan does not see the AMX tile loads (inline asm): the packed weight is put right before a
    # PROT_NONE page instead, so any read past its end (beyond the slack the AMX tiles need) faults.
    # In a subprocess: a fault fails this test instead of killing the run.
    out = subprocess.run([sys.executable, "-c", _GUARD_CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stdout, out.stderr[-2000:])


def test_slimrt_isa_env_forces_a_path():
    code = ("import torch, slimrt; from slimrt import _native, ops; from slimrt.ops import reference as R\n"
            "a = torch.randint(-128, 128, (7, 67), dtype=torch.int8); b = torch.randint(-128, 128, (33, 67), dtype=torch.int8)\n"
            "assert torch.equal(ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32))\n"
            "print(_native.load().active_isa())")
    env = dict(os.environ, SLIMRT_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "scalar", out.stderr


@pytest.mark.skipif(not AMX, reason="this CPU has no AMX")
def test_slimrt_amx_env_switches_the_gemm_kernel():
    code = ("import torch, slimrt; from slimrt import ops; from slimrt.ops import reference as R\n"
            "a = torch.randint(-128, 128, (40, 200), dtype=torch.int8); b = torch.randint(-128, 128, (50, 200), dtype=torch.int8)\n"
            "assert torch.equal(ops.int8_gemm(a, b, None, None, torch.int32), R.int8_gemm(a, b, None, None, torch.int32))\n"
            "print(slimrt.info()['int8_gemm'])")
    env = {k: v for k, v in os.environ.items() if k != "SLIMRT_ISA"}
    for flag, want in (("0", "vnni"), ("1", "amx"), ("", "amx")):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, SLIMRT_AMX=flag), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == want, (flag, out.stderr)


@pytest.mark.skipif(not AMX or not sys.platform.startswith("linux"), reason="Linux with AMX only")
def test_amx_permission_is_asked_only_when_amx_runs():
    # A granted tile-state permission enlarges every signal frame of the process, so slimrt asks for
    # it on the first GEMM that would use AMX, and never with SLIMRT_AMX=0.
    code = ("import ctypes, torch; from slimrt import ops\n"
            "a = torch.randint(-128, 128, (40, 64), dtype=torch.int8); ops.int8_gemm(a, a[:20], None, None, torch.int32)\n"
            "m = ctypes.c_uint64(0)\n"
            "assert ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(m)) == 0\n"  # ARCH_GET_XCOMP_PERM
            "print(m.value >> 18 & 1)")
    env = {k: v for k, v in os.environ.items() if k not in ("SLIMRT_ISA", "SLIMRT_AMX")}
    for flag, want in (("0", "0"), ("", "1")):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, SLIMRT_AMX=flag), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == want, (flag, out.stdout, out.stderr)


def test_slimrt_amx_env_is_checked():
    code = "from slimrt import _native; _native.load()"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SLIMRT_AMX="yes"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "SLIMRT_AMX='yes' is not 0 or 1" in out.stderr
    # AMX lives inside the avx512 path: insisting on it with another path forced is an error too.
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SLIMRT_AMX="1", SLIMRT_ISA="scalar"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "SLIMRT_AMX=1 needs the avx512 path" in out.stderr, out.stderr
    if not AMX:  # asking for AMX where there is none is an error, not an illegal instruction
        with pytest.raises(ValueError, match="AMX is not available"):
            _native.set_amx(True)


# ---- Int8Linear module ------------------------------------------------------------------------------

def _sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))


def test_int8linear_quality_and_exact_w8a8_math(isa):
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 257)
    x = torch.randn(4, 9, 384)
    with torch.no_grad():
        dense = lin(x)
        q8 = Int8Linear.from_linear(lin, mode="w8a8")
        y = q8(x)
        y_w8 = q8(x, mode="w8")
    assert y.shape == dense.shape
    sqnr, sqnr_w8 = _sqnr_db(dense, y), _sqnr_db(dense, y_w8)
    assert sqnr >= 35.0, f"w8a8 SQNR {sqnr:.1f} dB below the 35 dB floor"
    assert sqnr_w8 >= 38.0, f"w8 SQNR {sqnr_w8:.1f} dB below the 38 dB floor"
    assert_same_bits(y, R.int8_linear(x, q8.w_q, q8.w_scale, q8.bias), "Int8Linear vs reference W8A8 math")
    with torch.no_grad():
        yb = q8(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert_same_bits(yb, R.int8_linear(x.bfloat16(), q8.w_q, q8.w_scale, q8.bias), "Int8Linear bf16")


def test_weight_only_bits_do_not_depend_on_threads_batching_or_fusion(isa):
    # The native decode step fuses q/k/v (and gate/up) weights side by side and promises the same bits
    # as running them apart; that needs a column's sum order to be the same whichever kernel and
    # thread take its panel, and an M = 1 row to equal the same row of an M = 2 batch.
    g = torch.Generator().manual_seed(11)
    k = 1000
    ws = [_rand_i8(n, k, gen=g) for n in (112, 48, 80)]
    ss = [torch.rand(w.shape[0], generator=g) * 0.01 + 1e-3 for w in ws]
    x = torch.randn(13, k, generator=g)  # from 6 rows on, the blocked kernel: two 6-row tiles and one row
    wf, sf = torch.cat(ws), torch.cat(ss)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3, 5):
            torch.set_num_threads(threads)
            outs.append(ops.int8_weight_only_linear(x[:1], wf, sf, None, ops.int8_pack_weight(wf)))
        for o in outs[1:]:
            assert_same_bits(o, outs[0], f"w8 {isa}: threads")
        apart = torch.cat([ops.int8_weight_only_linear(x[:1], w, s_, None, ops.int8_pack_weight(w))
                           for w, s_ in zip(ws, ss)], dim=-1)
        assert_same_bits(apart, outs[0], f"w8 {isa}: fused vs apart")
        pack = ops.int8_pack_weight(wf)
        for m in (2, 5, 6, 13):
            both = ops.int8_weight_only_linear(x[:m], wf, sf, None, pack)
            assert_same_bits(both[:1], outs[0], f"w8 {isa}: M = 1 vs row 0 of M = {m}")
            for i in (m // 2, m - 1):
                one = ops.int8_weight_only_linear(x[i:i + 1], wf, sf, None, pack)
                assert_same_bits(both[i:i + 1], one, f"w8 {isa}: row {i} of M = {m} vs the row alone")
    finally:
        torch.set_num_threads(before)


def test_weight_only_row_blocks_do_not_change_bits(isa):
    # The vector paths convert x to fp32 a block of rows at a time (1020 rows at K = 1024); rows of
    # later blocks and of blocks cut mid-quad must come out as they do in a call of their own.
    g = torch.Generator().manual_seed(12)
    m, k, n = 2500, 1024, 40
    w, s = _rand_i8(n, k, gen=g), torch.rand(n, generator=g) * 0.01 + 1e-3
    b = torch.randn(n, generator=g)
    packed = ops.int8_pack_weight(w)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(m, k, generator=g).to(dtype)
        whole = ops.int8_weight_only_linear(x, w, s, b, packed)
        parts = torch.cat([ops.int8_weight_only_linear(x[i:i + 7], w, s, b, packed) for i in range(0, m, 7)])
        assert_same_bits(whole, parts, f"w8 {isa} {dtype}: one call vs 7-row calls")


_W8_PEAK_CODE = r"""
import sys, torch
from slimrt import _native, ops
def hwm_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
_native.load().set_isa(sys.argv[1])
m, k, n = 65536, 1024, 16
x = torch.ones(m, k, dtype=torch.bfloat16)  # 128 MiB, made without an fp32 temporary
w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
packed = ops.int8_pack_weight(w)
ops.int8_weight_only_linear(x[:8], w, torch.ones(n), None, packed)
before = hwm_mb()
y = ops.int8_weight_only_linear(x, w, torch.ones(n), None, packed)
print(round(hwm_mb() - before, 1), y.shape[0])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_weight_only_linear_keeps_memory_flat_on_a_large_bf16_input():
    # Before the row blocks, the vector paths made an fp32 copy of all of x: 256 MiB on top of this
    # 128 MiB bf16 input (12.8 GB peak for a 4.3 GB one). Now the copy is one 4 MiB block.
    for isa_name in [i for i in ISAS if i != "scalar"]:
        out = subprocess.run([sys.executable, "-c", _W8_PEAK_CODE, isa_name], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        grown, rows = out.stdout.split()
        assert int(rows) == 65536 and float(grown) < 48, f"{isa_name}: the call raised peak RSS by {grown} MiB"


def test_int8linear_concurrent_calls_match_serial():
    torch.manual_seed(1)
    mod = Int8Linear.from_linear(torch.nn.Linear(256, 130))
    xs = [torch.randn(1 + 3 * i, 256) for i in range(8)]
    with torch.no_grad():
        serial = [(mod(x), mod(x, mode="w8")) for x in xs]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            with torch.no_grad():
                results[t] = [(mod(x), mod(x, mode="w8")) for _ in range(10) for x in xs]
        except BaseException as e:  # reported below with the thread id
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for t, outs in results.items():
        for i, (y, y8) in enumerate(outs):
            want, want8 = serial[i % len(xs)]
            assert torch.equal(y, want) and torch.equal(y8, want8), f"thread {t} call {i} differs from serial"


# ---- machine probes -------------------------------------------------------------------------------

def test_probes_report_positive_rates_and_refuse_the_scalar_path():
    ext = _native.load()
    before = ext.active_isa()
    if before == "avx512":
        assert ext.probe_int8_peak(1, 0.01) > 1e9
    assert ext.probe_read_bandwidth(8 << 20, 1, 1) > 1e8
    try:
        ext.set_isa("scalar")
        with pytest.raises(ValueError, match="probe_int8_peak: needs the avx512"):
            ext.probe_int8_peak(1, 0.01)
        with pytest.raises(ValueError, match="probe_read_bandwidth"):
            ext.probe_read_bandwidth(8 << 20, 1, 1)
    finally:
        ext.set_isa(before)
    with pytest.raises(ValueError, match="nbytes >= 1 MiB"):
        ext.probe_read_bandwidth(1024, 1, 1)


def test_amx_probe_runs_as_the_first_amx_use_of_a_process():
    # The AMX peak probe may be the first tile instruction of a process: it must ask for the tile
    # state itself (a fresh process, no GEMM before it), or refuse cleanly where there is no AMX.
    code = ("from slimrt import _native; e = _native.load()\n"
            "try:\n    print(e.probe_amx_peak(1, 0.01) > 1e9)\n"
            "except ValueError as err:\n    print('refused' if 'not available' in str(err) else err)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == ("True" if AMX else "refused"), (out.returncode, out.stderr)


def test_back_to_back_parallel_calls_stay_correct():
    # Many short parallel runs in a row exercise the thread pool's hand-over between runs (a worker
    # waking late must neither run a finished run's task nor steal an index of the next run).
    torch.manual_seed(2)
    w = _rand_i8(130, 64)
    s = torch.rand(130) + 0.1
    wp = ops.int8_pack_weight(w)
    xs = [torch.randn(m, 64) for m in (1, 12, 40)]
    want = [R.int8_linear(x, w, s, None) for x in xs]
    for i in range(1500):
        j = i % 3
        y = ops.int8_linear(xs[j], w, s, None, wp)
        if i % 100 < 3:
            assert_same_bits(y, want[j], f"call {i}")


def test_int8_linear_survives_model_to_bf16():
    """model.to(torch.bfloat16) must not turn the fp32 scales the kernels take into bf16."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    mod = Int8Linear.from_linear(lin)
    x = torch.randn(3, 64)
    with torch.no_grad():
        y32 = mod(x)
        mod.to(torch.bfloat16)
        assert mod.w_scale.dtype == torch.float32 and mod.bias.dtype == torch.bfloat16
        y16 = mod(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    err = (y16.float() - y32).abs().max().item()
    assert err < 0.05, f"bf16 model output differs from fp32 by {err}"


# ---- epilogue activations of int8_linear ------------------------------------------------------------

ACTS = ["none", "gelu", "gelu_tanh", "relu", "silu"]


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,k,n", [(1, 7, 17), (67, 257, 193), (200, 384, 1536)])
def test_fused_activation_matches_reference(isa, activation, dtype, m, k, n):
    """act(linear) fused in the kernel's epilogue equals the reference (linear in fp32, torch's
    activation, then the cast) up to the activation's float error: the pre-activation is exact."""
    g = torch.Generator().manual_seed(m * 7 + n)
    x = (torch.randn(m, k, generator=g) * 3).to(dtype)
    w_q, w_s = ops.quantize_per_channel(torch.randn(n, k, generator=g))
    bias = torch.randn(n, generator=g)
    got = ops.int8_linear(x, w_q, w_s, bias, ops.int8_pack_weight(w_q), activation)
    want = reference.int8_linear(x, w_q, w_s, bias, activation)
    assert got.dtype == dtype and got.shape == want.shape
    if activation in ("none", "relu"):
        assert_same_bits(got, want, f"int8_linear activation={activation}")
        return
    pre = reference.int8_linear(x, w_q, w_s, bias).float()
    # fp32: the erf/tanh/exp approximations (~1e-7 relative) on values up to |pre|; bf16: one rounding step
    tol = 4e-7 * pre.abs() + 1e-6 if dtype == torch.float32 else 2 ** -7 * pre.abs() + 1e-6
    err = (got.float() - want.float()).abs()
    assert bool((err <= tol).all()), f"{activation} {dtype}: max err {err.max().item():.3g}"


def test_fused_activation_special_values(isa):
    """A NaN row and an Inf row (its per-token scale is NaN) give NaN through every activation; a zero
    row gives act(bias)."""
    w_q = torch.ones(16, 16, dtype=torch.int8)
    w_s = torch.ones(16)
    x = torch.zeros(3, 16)
    x[0, 0] = float("nan")
    x[1, 0] = float("inf")
    bias = torch.linspace(-3, 3, 16)
    for act in ACTS:
        y = ops.int8_linear(x, w_q, w_s, bias, ops.int8_pack_weight(w_q), act)
        want = reference.int8_linear(x, w_q, w_s, bias, act)
        assert torch.isnan(y[0]).all() and torch.isnan(y[1]).all(), act  # an Inf row's scale is NaN too
        torch.testing.assert_close(y[2], want[2], atol=1e-6, rtol=1e-6)


def test_unknown_activation_is_refused():
    w_q = torch.ones(4, 8, dtype=torch.int8)
    for fn in (ops.int8_linear, lambda *a: reference.int8_linear(*a[:4], a[5])):
        with pytest.raises(ValueError, match="activation='tanh' is not one of"):
            fn(torch.randn(2, 8), w_q, torch.ones(4), None, None, "tanh")
