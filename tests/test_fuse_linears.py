"""fuse_linears: the runner's side-by-side repack of projections that read the same input."""

from __future__ import annotations

import torch
from torch import nn

from slimrt.models._common import fuse_linears
from slimrt.nn import Int8Linear


def _lin(n: int, k: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def test_int8_fused_equals_separate_bit_for_bit():
    """Per-token quantization of x is the same for every projection and each output column is its own
    dot product, so the fused GEMM gives exactly the separate results, in both modes."""
    for mode in ("w8a8", "w8"):
        mods = [Int8Linear.from_linear(_lin(n, 96, bias=b, seed=n), mode=mode)
                for n, b in ((64, True), (33, False), (17, True))]
        fused = fuse_linears(mods)
        assert isinstance(fused, Int8Linear) and fused.out_features == 64 + 33 + 17 and fused.mode == mode
        x = torch.randn(2, 7, 96)
        with torch.inference_mode():
            parts = fused(x).split([64, 33, 17], dim=-1)
            for m, p in zip(mods, parts):
                assert torch.equal(m(x), p), mode


def test_dense_fused_matches_separate():
    mods = [_lin(40, 32, seed=1), _lin(24, 32, bias=False, seed=2)]
    fused = fuse_linears(mods)
    x = torch.randn(5, 32)
    with torch.no_grad():
        for m, p in zip(mods, fused(x).split([40, 24], dim=-1)):
            torch.testing.assert_close(m(x), p, atol=1e-6, rtol=1e-6)


def test_smoothquant_vectors_must_match():
    def smoothed(seed, smooth):
        lin = _lin(16, 32, seed=seed)
        return Int8Linear.from_weight(lin.weight, lin.bias, mode="w8a8", smooth=smooth)

    a = smoothed(3, torch.rand(32) + 0.5)
    b = smoothed(4, a.smooth.clone())
    fused = fuse_linears([a, b])
    x = torch.randn(3, 32)
    with torch.inference_mode():
        assert torch.equal(torch.cat([a(x), b(x)], -1), fused(x))
    c = smoothed(5, torch.rand(32) + 0.5)
    assert fuse_linears([a, c]) is None
    assert fuse_linears([a, Int8Linear.from_linear(_lin(16, 32), mode="w8a8")]) is None


def test_unfusable_sets_return_none():
    a = Int8Linear.from_linear(_lin(16, 32), mode="w8a8")
    assert fuse_linears([a]) is None
    assert fuse_linears([a, Int8Linear.from_linear(_lin(16, 32), mode="w8")]) is None  # modes differ
    assert fuse_linears([a, Int8Linear.from_linear(_lin(16, 48), mode="w8a8")]) is None  # K differs
    assert fuse_linears([a, _lin(16, 32)]) is None  # module types differ
    assert fuse_linears([_lin(16, 32), _lin(16, 48)]) is None
