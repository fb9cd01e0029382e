"""slimrt sweep: every recipe on a tiny random model, written as JSON, CSV and charts that read back."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

import slimrt
from slimrt import cli
from slimrt.charts import Axis, pareto
from slimrt.sweep import axes, fields

from quality_helpers import TEXTS, tiny_bert, tiny_llama, word_tokenizer

FAST = ["--reps", "1", "--prefill-tokens", "16", "--decode-tokens", "8", "--no-progress"]


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return str(path)


def _hf_dir(tmp_path_factory, name: str, model) -> str:
    path = tmp_path_factory.mktemp("hf") / name
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _hf_dir(tmp_path_factory, "tiny-llama", tiny_llama())


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _hf_dir(tmp_path_factory, "tiny-bert", tiny_bert())


def _read_outputs(out: str, kind: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(out, "sweep.json"), encoding="utf-8") as f:
        result = json.load(f)
    with open(os.path.join(out, "sweep.csv"), encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == fields(kind)
        rows = list(reader)
    assert result["fields"] == list(fields(kind)) and result["kind"] == kind
    assert len(rows) == len(result["rows"])
    for row in result["rows"]:
        assert set(row) == set(fields(kind)), sorted(set(row) ^ set(fields(kind)))
    return result, rows


def _check_png(path: str) -> None:
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, img.shape
    assert float(img[..., :3].std()) > 0.01  # something was drawn on the white


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_sweep_writes_every_field_and_charts(kind, llama_dir, bert_dir, texts_file, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    src = llama_dir if kind == "decoder" else bert_dir
    out = str(tmp_path / "out")
    assert cli.main(["sweep", src, "--recipes", "w8,w8a8", "--data", texts_file, "--out", out, *FAST]) == 0
    result, rows = _read_outputs(out, kind)
    names = [r["name"] for r in result["rows"]]
    assert names == ["fp32", "w8", "w8a8"], names
    ref, w8, w8a8 = result["rows"]
    assert ref["reference"] and ref["status"] == "ok" and ref["bytes_ratio"] == 1.0
    for r in (w8, w8a8):
        assert r["status"] == "ok" and r["error"] is None, r
        assert 0 < r["bytes"] < ref["bytes"] and r["bytes_ratio"] < 0.7, (r["name"], r["bytes"], ref["bytes"])
        assert r["compress_s"] > 0
    speed = ["prefill_tokens_per_s", "decode_tokens_per_s"] if kind == "decoder" else ["sentences_per_s"]
    quality = ["ppl", "ppl_ratio", "kl", "top1"] if kind == "decoder" else ["cos_min", "cos_mean", "retrieval_top5",
                                                                             "spearman"]
    for r in result["rows"]:
        for key in speed + quality:
            assert isinstance(r[key], float) and math.isfinite(r[key]), (r["name"], key, r[key])
        for key in speed:
            assert r[key] > 0, (r["name"], key, r[key])
    if kind == "decoder":
        assert ref["ppl_ratio"] == 1.0 and ref["kl"] == 0.0
        assert 0.8 < w8["ppl_ratio"] < 1.2 and 0 <= w8["kl"] < 0.1, w8
        assert result["settings"]["prefill_tokens"] + result["settings"]["decode_tokens"] <= 64  # the tiny context
    else:
        assert w8["cos_min"] > 0.95 and w8["cos_mean"] >= w8["cos_min"], w8
    # The CSV holds the same numbers (6 significant digits) and flags.
    assert float(rows[1]["bytes"]) == pytest.approx(w8["bytes"], rel=1e-5)
    assert rows[0]["pareto_bytes"] == str(ref["pareto_bytes"])
    xs, y = axes(kind)
    for flag, x in zip([f for f in fields(kind) if f.startswith("pareto_")], xs):
        assert [r[flag] for r in result["rows"]] == pareto(result["rows"], x, y), flag
        assert any(r[flag] for r in result["rows"]), flag
    assert result["machine"]["threads"] == torch.get_num_threads() and result["data"] == texts_file
    assert result["name"] == os.path.basename(src) and result["source"] == src
    for png in ("sweep_bytes.png", "sweep_speed.png"):
        _check_png(os.path.join(out, png))
    table = capsys.readouterr().out
    assert "w8a8" in table and ("decode tok/s" in table if kind == "decoder" else "sentences/s" in table), table


def test_a_failing_recipe_is_recorded_and_the_sweep_goes_on(llama_dir, texts_file, tmp_path, monkeypatch, capsys):
    from slimrt.sweep import measure

    real = measure.decoder_speed
    calls = []

    def flaky(runner, *a, **kw):  # the second model timed (the first recipe) breaks
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the kernel fell over\nsecond line")
        return real(runner, *a, **kw)

    monkeypatch.setattr(measure, "decoder_speed", flaky)
    out = str(tmp_path / "out")
    assert cli.main(["sweep", llama_dir, "--recipes", "w8,w8a8", "--data", texts_file, "--out", out, "--no-plot",
                     *FAST]) == 0
    result, rows = _read_outputs(out, "decoder")
    ref, bad, good = result["rows"]
    assert bad["status"] == "failed" and bad["error"] == "speed: RuntimeError: the kernel fell over", bad
    assert bad["bytes"] > 0 and bad["ppl_ratio"] is None  # what was measured before the failure is kept
    assert not bad["pareto_bytes"] and not bad["pareto_decode"]
    assert good["status"] == "ok" and good["ppl_ratio"] is not None
    assert rows[1]["status"] == "failed" and rows[1]["ppl_ratio"] == "" and "fell over" in rows[1]["error"]
    assert not os.path.exists(os.path.join(out, "sweep_bytes.png"))  # --no-plot
    captured = capsys.readouterr()
    assert "FAILED: speed: RuntimeError" in captured.out and "failed: w8" in captured.err


def test_a_recipe_that_fails_to_compress_is_recorded(bert_dir, texts_file, tmp_path):
    # A real failure inside slimrt.compress: a recipe file that calibrates (SmoothQuant), given
    # calibration batches it cannot read; w8 reads none and goes through.
    recipe = tmp_path / "bad.json"
    recipe.write_text(json.dumps({"methods": ["w8a8"], "smoothquant": True}))
    result = slimrt.sweep(bert_dir, [str(recipe), "w8"], TEXTS, reps=1, progress=False,
                          calibration=[[torch.zeros(0, 0, dtype=torch.long)]])
    bad = result["rows"][1]
    assert bad["name"] == "bad" and bad["status"] == "failed" and bad["error"].startswith("compress: "), bad
    assert result["rows"][2]["status"] == "ok"


def test_unknown_recipe_name_fails_before_any_work(llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["sweep", llama_dir, "--recipes", "w8,no-such-preset", "--out", str(out), *FAST]) == 2
    assert "no-such-preset" in capsys.readouterr().err
    assert not out.exists()


def test_default_recipes_are_the_presets_that_act_on_the_model():
    from slimrt.recipe import PRESETS
    from slimrt.sweep.measure import fitting_presets

    names = fitting_presets(tiny_bert(), "encoder")
    assert names == [n for n in PRESETS if n in names] and {"w8", "w8a8"} <= set(names), names
    assert fitting_presets(torch.nn.Sequential(torch.nn.ReLU()), "encoder") == []  # no layer any preset takes


def test_peer_needs_llama_cpp_and_a_gguf(llama_dir, tmp_path, monkeypatch, capsys):
    from slimrt.sweep import peer

    monkeypatch.setattr(peer, "available", lambda: False)
    assert cli.main(["sweep", llama_dir, "--peer", "llama.cpp", "--out", str(tmp_path / "a"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "llama-cpp-python" in err and "pip install 'slimrt[llamacpp]'" in err, err
    monkeypatch.setattr(peer, "available", lambda: True)
    assert cli.main(["sweep", llama_dir, "--peer", "llama.cpp", "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "needs a GGUF source" in capsys.readouterr().err


def test_peer_rows_measure_like_the_recipes(llama_dir, tmp_path, monkeypatch):
    """The peer path end to end with a stand-in for llama.cpp that runs the source model itself:
    its quality against the reference is then exact (ratio 1, KL 0) and every field is filled."""
    from slimrt.evaluate import load_hf
    from slimrt.sweep import peer

    model, _ = load_hf(llama_dir)

    class FakeLlama:
        def __init__(self, path, threads, logits_all=False, n_ctx=None):
            self.n_ctx = n_ctx or 512

        def prefill(self, ids):
            with torch.inference_mode():
                model(input_ids=torch.tensor([list(ids)]))

        def steps(self, token, n):
            for _ in range(n):
                self.prefill([token])

        def batch_logits(self, ids, mask):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).logits.float()

    def fake_quantize(src, cache, types, threads):
        out = {}
        for t in types:
            out[t] = os.path.join(cache, f"x.{t}.gguf")
            with open(out[t], "wb") as f:
                f.write(b"\0" * {"F32": 4000, "Q8_0": 1000, "Q4_0": 500}[t])
        return out

    monkeypatch.setattr(peer, "check_peer", lambda p, s: None)
    monkeypatch.setattr(peer, "quantize", fake_quantize)
    monkeypatch.setattr(peer, "LlamaCpp", FakeLlama)
    monkeypatch.setattr("slimrt.gguf.find_gguf", lambda src: src)
    result = slimrt.sweep(llama_dir, ["w8"], TEXTS, peer="llama.cpp", reps=1, prefill_tokens=16, decode_tokens=8,
                          progress=False)
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "w8", "llama.cpp F32", "llama.cpp Q8_0", "llama.cpp Q4_0"]
    for t, size in (("F32", 4000), ("Q8_0", 1000), ("Q4_0", 500)):
        r = rows[f"llama.cpp {t}"]
        assert r["status"] == "ok" and r["provider"] == "llama.cpp" and r["bytes"] == size, r
        assert r["ppl_ratio"] == pytest.approx(1.0, abs=1e-9) and r["kl"] == pytest.approx(0.0, abs=1e-9), r
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0
    assert rows["llama.cpp Q4_0"]["pareto_bytes"]  # smallest and as good as the reference


def test_pareto_front():
    x, y = Axis("b", "bytes", "low"), Axis("q", "quality", "high")
    rows = [{"b": 10, "q": 1.0}, {"b": 5, "q": 0.9}, {"b": 6, "q": 0.8}, {"b": 5, "q": 0.9},
            {"b": 2, "q": None}, {"b": 1, "q": 0.1}, {"b": float("nan"), "q": 2.0}]
    # (6, 0.8) is beaten by (5, 0.9); equal points are both optimal; missing values never are.
    assert pareto(rows, x, y) == [True, True, False, True, False, True, False]
    with pytest.raises(ValueError, match="better"):
        Axis("b", "bytes", "smaller")
