"""w4 family: the native kernels against ops/reference_w4.py (the spec), bit for bit on every ISA path.

Every path computes the spec's integers exactly (per group: sum (code - zero) * x_q) and its fp32 epilogue
in the same op order (acc += float(isum) * (scale * x_scale), no FMA), so float32 and bfloat16 outputs
are compared for equality. Quality (the int4 weight against the float one) is tested apart, by SQNR.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitwise import assert_same_bits
from slimrt import _native, ops
from slimrt.nn import W4Linear
from slimrt.ops import reference_w4 as R

pytestmark = pytest.mark.skipif(not _native.available(), reason="native extension not built")

ISAS = _native.load().available_isas() if _native.available() else []
# (M, N, K, G): K not a multiple of G, N odd and not a multiple of 16, M across the tile sizes 1..65.
SHAPES = [(1, 1, 1, 32), (1, 33, 100, 32), (2, 17, 257, 64), (3, 7, 67, 128), (4, 67, 33, 32), (5, 257, 7, 64),
          (7, 16, 128, 128), (17, 1025, 96, 32), (33, 31, 576, 64), (65, 40, 130, 128), (1, 1536, 576, 64),
          (64, 19, 1025, 32)]


@pytest.fixture(params=ISAS)
def isa(request):
    ext = _native.load()
    before = ext.active_isa()
    ext.set_isa(request.param)
    yield request.param
    ext.set_isa(before)


def _weight(n: int, k: int, g: int, zp: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * (torch.rand(n, 1, generator=gen) + 0.1)
    return R.quantize(w, g, zp)


@pytest.mark.parametrize("m,n,k,g", SHAPES)
@pytest.mark.parametrize("zp", [True, False], ids=["zero_point", "symmetric"])
def test_w4_linear_matches_reference_exactly(isa, m, n, k, g, zp):
    q4, s, z = _weight(n, k, g, zp, m * 7919 + n * 31 + k)
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=gen) * 3
    bias = torch.randn(n, generator=gen)
    packed = ops.w4_pack_weight(q4, s, z, g, k)
    for dt in (torch.float32, torch.bfloat16):
        xd = x.to(dt)
        for b in (None, bias):
            want = R.w4_linear(xd, q4, s, z, b, g)
            assert_same_bits(ops.w4_linear(xd, q4, s, z, b, packed, g), want, f"{isa} {dt} bias={b is not None}")
            assert_same_bits(ops.w4_linear(xd, q4, s, z, b, None, g), want, f"{isa} {dt} unpacked")


def test_every_isa_path_gives_the_same_bits():
    q4, s, z = _weight(45, 300, 64, True, 1)
    x = torch.randn(9, 300)
    ext = _native.load()
    before = ext.active_isa()
    outs = {}
    try:
        for isa in ISAS:
            ext.set_isa(isa)
            outs[isa] = ops.w4_linear(x, q4, s, z, None, ops.w4_pack_weight(q4, s, z, 64, 300), 64)
    finally:
        ext.set_isa(before)
    for isa, y in outs.items():
        assert_same_bits(y, outs[ISAS[0]], f"{isa} vs {ISAS[0]}")


def test_special_activations(isa):
    """An all-zero group, a NaN, an Inf and a tiny amax behave as the spec says (NaN reaches its row only)."""
    q4, s, z = _weight(20, 96, 32, True, 2)
    x = torch.randn(5, 96)
    x[0, :32] = 0
    x[1, 40] = float("nan")
    x[2, 70] = float("inf")
    x[3, 0:32] = 1e-38
    x[4] = 0
    assert_same_bits(ops.w4_linear(x, q4, s, z, None, None, 32), R.w4_linear(x, q4, s, z, None, 32), isa)
    assert bool(ops.w4_linear(x, q4, s, z, None, None, 32)[1].isnan().all())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(m=st.integers(1, 20), n=st.integers(1, 40), k=st.integers(1, 300), g=st.sampled_from(R.GROUP_SIZES),
       zp=st.booleans())
def test_random_shapes(m, n, k, g, zp):
    q4, s, z = _weight(n, k, g, zp, m + n + k)
    x = torch.randn(m, k)
    assert_same_bits(ops.w4_linear(x, q4, s, z, None, ops.w4_pack_weight(q4, s, z, g, k), g),
                  R.w4_linear(x, q4, s, z, None, g), f"{(m, n, k, g, zp)}")


def test_batched_leading_dims_and_strided_x():
    q4, s, z = _weight(24, 80, 32, False, 3)
    x = torch.randn(2, 3, 160)[..., ::2]  # (2, 3, 80), stride 2 in K
    assert_same_bits(ops.w4_linear(x, q4, s, z, None, None, 32), R.w4_linear(x.contiguous(), q4, s, z, None, 32),
                  "strided")


# ---- packing and the format ---------------------------------------------------------------------

@pytest.mark.parametrize("k,g", [(1, 32), (31, 32), (64, 64), (129, 128), (257, 64)])
def test_pack_codes_round_trip(k, g):
    codes = torch.randint(0, 16, (5, k), dtype=torch.uint8)
    q4 = R.pack_codes(codes, g)
    assert q4.shape == (5, -(-k // g) * g // 2) and q4.dtype == torch.uint8
    assert torch.equal(R.unpack_codes(q4, k), codes)
    assert not bool(R.unpack_codes(q4, q4.shape[1] * 2)[:, k:].any()), "padding codes must be 0"
    assert int(q4[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4 if k > 1 else 0), "low nibble = even k"


@pytest.mark.parametrize("zp", [True, False])
@pytest.mark.parametrize("g", R.GROUP_SIZES)
def test_quantize_round_trip_quality(g, zp):
    """Round to nearest reconstructs a Gaussian weight at the SQNR 4 bits give (~20 dB); the grid
    values themselves round back to their codes."""
    w = torch.randn(64, 512)
    q4, s, z = R.quantize(w, g, zp)
    deq = R.dequantize(q4, s, z, g, 512)
    sqnr = 10 * torch.log10(w.pow(2).sum() / (w - deq).pow(2).sum()).item()
    assert sqnr > (19.0 if g <= 64 else 18.0), f"g={g} zp={zp}: SQNR {sqnr:.2f} dB"
    zero = zb.float() if (zb := z) is not None else torch.full(s.shape, 8.0)
    assert torch.equal(R.quantize_codes(deq, s, zero, g), R.unpack_codes(q4, 512)), "grid values must round to themselves"


def test_packed_blob_is_checked():
    q4, s, z = _weight(16, 64, 32, True, 4)
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="w_packed"):
        ops.w4_linear(x, q4, s, z, None, torch.zeros(10, dtype=torch.uint8), 32)
    other = ops.w4_pack_weight(*_weight(16, 64, 64, True, 4), 64, 64)
    with pytest.raises(ValueError, match="w_packed"):
        ops.w4_linear(x, q4, s, z, None, other, 32)


def test_bad_arguments_are_named():
    q4, s, z = _weight(8, 64, 32, True, 5)
    with pytest.raises(ValueError, match="group_size"):
        ops.w4_linear(torch.randn(1, 64), q4, s, z, None, None, 48)
    with pytest.raises(ValueError, match="w_q4"):
        ops.w4_linear(torch.randn(1, 96), q4, s, z, None, None, 32)
    with pytest.raises(TypeError, match="w_scale"):
        ops.w4_linear(torch.randn(1, 64), q4, s.float(), z, None, None, 32)


def test_opcheck():
    q4, s, z = _weight(8, 64, 32, True, 6)
    x = torch.randn(3, 64)
    torch.library.opcheck(torch.ops.slimrt.w4_linear.default, (x, q4, s, z, None, ops.w4_pack_weight(q4, s, z, 32, 64), 32))
    torch.library.opcheck(torch.ops.slimrt.w4_pack_weight.default, (q4, s, z, 32, 64))


# ---- the module ---------------------------------------------------------------------------------

def test_module_quality_and_dtype_moves():
    lin = torch.nn.Linear(200, 48)
    mod = W4Linear.from_linear(lin, group_size=32)
    x = torch.randn(6, 200)
    want = lin(x).detach()
    got = mod(x)
    sqnr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum()).item()
    assert sqnr > 15, f"W4Linear vs nn.Linear: SQNR {sqnr:.1f} dB"
    scale = mod.w_scale.clone()
    mod.to(torch.bfloat16)
    assert mod.w_scale.dtype == torch.float16 and torch.equal(mod.w_scale, scale), "scales must stay exact fp16"
    assert mod(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("m,n,k", [(3, 5, 0), (3, 0, 7), (0, 5, 7)])
def test_zero_sizes(isa, m, n, k):
    """K = 0 is the empty sum (the bias); an empty weight may have no storage at all."""
    q4, s, z = R.quantize(torch.randn(n, k), 32, True)
    b, x = torch.randn(n), torch.randn(m, k)
    assert_same_bits(ops.w4_linear(x, q4, s, z, b, ops.w4_pack_weight(q4, s, z, 32, k), 32),
                  R.w4_linear(x, q4, s, z, b, 32), f"{isa} {(m, n, k)}")
