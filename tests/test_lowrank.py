"""LowRankLinear: the module against the dense nn.Linear it replaces, and its checkpoint protocol."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import slimrt
from slimrt.nn import MODULE_TYPES, LowRankLinear


def _linear(k=64, n=48, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return lin


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_full_rank_reproduces_the_linear():
    lin = _linear()
    mod = LowRankLinear.from_linear(lin, rank=48)
    x = torch.randn(5, 64)
    with torch.no_grad():
        err = _rel_err(mod(x), lin(x))
    assert err < 1e-5, f"full-rank factorization differs from the linear by {err:.3g}"


def test_error_decreases_with_rank():
    lin = _linear(96, 80)
    x = torch.randn(32, 96)
    with torch.no_grad():
        ref = lin(x)
        errs = [_rel_err(LowRankLinear.from_linear(lin, rank=r)(x), ref) for r in (4, 16, 40, 70)]
    assert all(a > b for a, b in zip(errs, errs[1:])), f"error not decreasing with rank: {errs}"
    assert errs[0] > 0.1, f"rank 4 of a random 80x96 matrix should lose a lot, got {errs[0]:.3g}"


def test_stores_and_counts_only_the_factors():
    mod = LowRankLinear.from_linear(_linear(64, 48), rank=8)
    sd = mod.state_dict()
    assert set(sd) == {"u", "v", "bias"}
    assert sd["u"].shape == (48, 8) and sd["v"].shape == (8, 64)
    assert all(t.is_contiguous() for t in sd.values())
    assert mod.num_params() == 8 * (64 + 48) + 48


def test_rank_arguments_are_checked():
    lin = _linear(64, 48)
    for bad in (0, 49, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            LowRankLinear.from_linear(lin, rank=bad)
    with pytest.raises(TypeError, match="nn.Linear"):
        LowRankLinear.from_linear(nn.Conv1d(3, 3, 1), rank=1)
    with pytest.raises(TypeError, match="factor_dtype"):
        LowRankLinear(4, 4, 2, factor_dtype=torch.float16)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_config_round_trip_builds_matching_shapes(quantized, bias):
    mod = LowRankLinear.from_linear(_linear(64, 48, bias=bias), rank=12, quantized=quantized)
    cfg = json.loads(json.dumps(mod.slimrt_config()))
    assert cfg["rank"] == 12
    empty = MODULE_TYPES["LowRankLinear"].from_slimrt_config(cfg)
    assert {k: (v.shape, v.dtype) for k, v in empty.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in mod.state_dict().items()}
    # load onto the meta-built module (assign=True) and compute the same numbers
    empty.load_state_dict(mod.state_dict(), assign=True)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(empty(x), mod(x), rtol=0, atol=0)
    if not quantized:  # loading puts the factors back into the kernel layout
        assert empty.u.stride() == (1, 48) and empty.v.stride() == (1, 12)


def test_loading_a_state_that_disagrees_with_the_rank_names_the_layer():
    mod = LowRankLinear.from_linear(_linear(64, 48), rank=12)
    other = LowRankLinear.from_linear(_linear(64, 48), rank=10)
    model = nn.Sequential(nn.Identity(), LowRankLinear.from_slimrt_config(mod.slimrt_config()))
    sd = {"1." + k: v for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"1: tensor 'u' has shape \(48, 10\) but the stored rank 12"):
        model.load_state_dict(sd, assign=True)


def test_bad_config_fields_are_errors():
    cfg = LowRankLinear.from_linear(_linear(64, 48), rank=12).slimrt_config()
    for key, val, msg in (("rank", 0, "rank"), ("rank", 49, "rank"), ("rank", "12", "rank"),
                          ("factor_dtype", "float64", "factor_dtype"), ("mode", "w4", "mode"),
                          ("bias", "yes", "bias")):
        with pytest.raises((ValueError, TypeError), match=msg):
            LowRankLinear.from_slimrt_config({**cfg, key: val})
    with pytest.raises(ValueError, match="lacks field 'rank'"):
        LowRankLinear.from_slimrt_config({k: v for k, v in cfg.items() if k != "rank"})


def test_bad_int8_scales_are_refused_at_load():
    mod = LowRankLinear.from_linear(_linear(64, 48), rank=12, quantized=True)
    sd = mod.state_dict()
    sd["v_scale"] = sd["v_scale"].clone()
    sd["v_scale"][3] = 0.0
    empty = LowRankLinear.from_slimrt_config(mod.slimrt_config())
    with pytest.raises(ValueError, match="v_scale"):
        empty.load_state_dict(sd, assign=True)


@pytest.mark.parametrize("mode", ["w8a8", "w8"])
def test_int8_factors_close_to_float_factors(mode):
    lin = _linear(128, 96)
    x = torch.randn(16, 128)
    with torch.no_grad():
        y_f = LowRankLinear.from_linear(lin, rank=32)(x)
        mod = LowRankLinear.from_linear(lin, rank=32, quantized=True, mode=mode)
        y_q = mod(x)
    err = _rel_err(y_q, y_f)
    assert err < 0.03, f"int8 factors ({mode}) differ from fp32 factors by {err:.3g}"
    assert set(mod.state_dict()) == {"u_q", "u_scale", "v_q", "v_scale", "bias"}


def test_bf16_factors_and_dtype_handling():
    lin = _linear(128, 96)
    x = torch.randn(8, 128)
    with torch.no_grad():
        y32 = LowRankLinear.from_linear(lin, rank=32)(x)
        mod = LowRankLinear.from_linear(lin, rank=32, factor_dtype=torch.bfloat16)
        assert mod.u.dtype == torch.bfloat16
        y_from32 = mod(x)  # fp32 input: cast to the factor dtype and back
        y_bf = mod(x.bfloat16())
    assert y_from32.dtype == torch.float32 and y_bf.dtype == torch.bfloat16
    assert _rel_err(y_bf, y32) < 0.02
    assert _rel_err(y_from32, y32) < 0.02


def test_to_keeps_kernel_layout_and_values():
    mod = LowRankLinear.from_linear(_linear(64, 48), rank=12)
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = mod(x)
        mod = mod.to(torch.bfloat16).float()
        assert mod.u.stride() == (1, 48)
        assert _rel_err(mod(x), y) < 0.02


def test_is_exported():
    assert slimrt.nn.LowRankLinear is LowRankLinear
