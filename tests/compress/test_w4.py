"""Method "w4" and its presets: what compress builds, its quality against the dense model, GPTQ against
round to nearest, and the checkpoint round trip with the load-time content checks of W4Linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimrt
from slimrt import checkpoint
from slimrt.compress.w4 import gptq_quantize
from slimrt.errors import CheckpointError
from slimrt.nn import Int8Linear, W4Linear
from slimrt.ops import reference_w4 as R
from slimrt.recipe import Recipe

transformers = pytest.importorskip("transformers")

from test_runner import PROMPTS, tiny_gpt2, tiny_llama  # noqa: E402


def _sqnr(want: torch.Tensor, got: torch.Tensor) -> float:
    return 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum()).item()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_preset_w4_body_int4_head_int8(family):
    model = tiny_llama() if family == "llama" else tiny_gpt2()
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        want = model(ids).logits
    slimrt.compress(model, "w4", progress=False)
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(("proj", "c_attn", "c_fc"))}
    assert kinds == {"W4Linear"}, kinds
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.mode == "w8"
    with torch.no_grad():
        got = model(ids).logits
    # Random tiny models (weights uniform-ish, no outliers): measured 10.9 (gpt2) and 15+ (llama) dB.
    assert _sqnr(want, got) > 8, f"{family} w4 logits SQNR {_sqnr(want, got):.1f} dB"
    text = slimrt.report(model)
    assert "w4_linear[" in str(text)


def test_group_size_and_symmetric_params():
    model = tiny_llama()
    slimrt.compress(model, Recipe(methods=("w4",), params={"w4": {"group_size": 32, "zero_point": False,
                                                                   "head": "w4"}}, ignore=()), progress=False)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, W4Linear) and q.group_size == 32 and q.w_zero is None
    assert isinstance(model.lm_head, W4Linear)
    with pytest.raises(ValueError, match="group_size"):
        Recipe(methods=("w4",), params={"w4": {"group_size": 48}})


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    """GPTQ minimizes the output error under the calibration inputs' statistics, not the weight error."""
    gen = torch.Generator().manual_seed(0)
    k, n, t = 256, 64, 2048
    mix = torch.randn(k, k, generator=gen) / k ** 0.5 + torch.eye(k)
    x = torch.randn(t, k, generator=gen) @ mix * (torch.rand(k, generator=gen) * 4 + 0.1)  # correlated, uneven
    w = torch.randn(n, k, generator=gen)
    want = x @ w.T
    rtn = R.dequantize(*R.quantize(w, 64, True), 64, k)
    q4, s, z = gptq_quantize(w, x.double().T @ x.double(), 64, True)
    gptq = R.dequantize(q4, s, z, 64, k)
    e_rtn, e_gptq = _sqnr(want, x @ rtn.T), _sqnr(want, x @ gptq.T)
    assert e_gptq > e_rtn + 1.0, f"output SQNR: GPTQ {e_gptq:.2f} dB, RTN {e_rtn:.2f} dB"


def test_w4_gptq_preset_runs_on_token_batches():
    model = tiny_llama()
    calib = [torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    slimrt.compress(model, "w4-gptq", calibration=calib, progress=False)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, W4Linear) and q.method == "gptq"


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    model = tiny_llama()
    slimrt.compress(model, "w4", progress=False)
    slimrt.save(model, tmp_path / "ck")
    loaded = checkpoint.load_model(tmp_path / "ck").model
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    q = loaded.model.layers[1].mlp.down_proj
    assert isinstance(q, W4Linear) and q.w_packed.numel() > 0 and q.group_size == 32
    info = checkpoint.read_metadata(tmp_path / "ck")
    cfgs = [m for m in info["modules"].values() if m["type"] == "W4Linear"]
    assert cfgs and all(c["config"]["group_size"] == 32 and c["config"]["method"] == "rtn" for c in cfgs)


def _one_layer(k: int = 70) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(W4Linear.from_linear(nn.Linear(k, 24), group_size=32))


@pytest.mark.parametrize("corrupt,match", [
    (lambda m: m.w_zero.__setitem__((3, 1), 16), "w_zero holds values above 15"),
    (lambda m: m.w_q4.__setitem__((0, 47), 0x50), "nonzero codes past in_features"),  # k = 95 > 70
    (lambda m: m.w_scale.__setitem__((2, 0), 0.0), "scale tensor"),
    (lambda m: m.w_scale.__setitem__((2, 0), float("nan")), "scale tensor"),
])
def test_corrupt_packed_tensor_is_refused_on_load(tmp_path, corrupt, match):
    model = _one_layer()
    with torch.no_grad():
        corrupt(model[0])
    slimrt.save(model, tmp_path / "bad")
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load_model(tmp_path / "bad", model=nn.Sequential(nn.Linear(70, 24)))


def test_wrong_packed_shape_or_dtype_is_refused(tmp_path):
    model = _one_layer()
    model[0].w_q4 = model[0].w_q4[:, :-1].contiguous()  # one byte short per row
    slimrt.save(model, tmp_path / "short")
    with pytest.raises(CheckpointError, match="w_q4.*shape"):
        checkpoint.load_model(tmp_path / "short", model=nn.Sequential(nn.Linear(70, 24)))
    model = _one_layer()
    model[0].w_q4 = model[0].w_q4.to(torch.int8)
    slimrt.save(model, tmp_path / "dtype")
    with pytest.raises(CheckpointError, match="w_q4.*dtype"):
        checkpoint.load_model(tmp_path / "dtype", model=nn.Sequential(nn.Linear(70, 24)))


def test_report_and_info_show_group_size_and_method(tmp_path, capsys):
    from slimrt.cli import main

    model = tiny_llama()
    slimrt.compress(model, "w4", progress=False)
    text = str(slimrt.report(model))
    assert "w4(g32,zp,rtn)" in text and "w4->w8" in text, text
    q = next(r for r in model.slimrt_meta["layers"] if r["name"].endswith("layers.0.self_attn.q_proj"))
    assert q["bytes_after"] == 64 * 64 // 2 + 64 * 2 * 3  # codes + fp16 scale + u8 zero per group of 32
    slimrt.save(model, tmp_path / "ck")
    assert main(["info", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "W4Linear layers: group 32, zero points, rtn" in out, out
