"""slimrt.evaluate, the quality gate and the `slimrt eval` / `slimrt info CKPT` / gate CLI paths on tiny models.

The metrics themselves are checked against hand values in test_metrics.py; here: that evaluate feeds
them the right tensors (same ids to both models, padding never scored, batches weighted correctly).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import slimrt  # noqa: E402
from slimrt import metrics  # noqa: E402
from slimrt.cli import main  # noqa: E402
from slimrt.evaluate import QualityGateError, check_quality, gate  # noqa: E402
from slimrt.nn import LowRankLinear  # noqa: E402
from slimrt.models import KernelPolicy  # noqa: E402
from slimrt.runner import Runner  # noqa: E402

from quality_helpers import TEXTS, clone, tiny_bert, tiny_llama, word_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def rank1(model):
    """Every encoder Linear replaced by a rank-1 LowRankLinear: a deliberately terrible model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and "pooler" not in name:
                setattr(parent, name, LowRankLinear.from_linear(child, 1))
    model.slimrt_meta = {"recipe": "rank-1 by hand"}
    return model


def test_encoder_identical_is_perfect(tok):
    m = tiny_bert()
    r = slimrt.evaluate(clone(m), m, TEXTS, tokenizer=tok)
    assert r["kind"] == "encoder" and r["texts"] == len(TEXTS)
    assert r["cos_min"] == pytest.approx(1.0, abs=1e-6), r
    assert r["retrieval_top5"] == 1.0 and r["spearman"] == pytest.approx(1.0), r


def test_encoder_full_length_check_runs_at_the_models_truncation(tok):
    ref = tiny_bert()
    cmp = slimrt.compress(clone(ref), "w8a8", progress=False)
    full = Runner(ref, tok).max_seq_length
    r = slimrt.evaluate(cmp, ref, TEXTS, tokenizer=tok, max_tokens=8)
    assert r["max_tokens"] == 8 and r["full_length_tokens"] == full > 8, r
    assert 0.9 < r["cos_min_full_length"] <= r["cos_mean_full_length"] <= 1.0 + 1e-9, r
    # A compressed runner that truncates shorter than its reference shows up in the long-input check only.
    short = slimrt.evaluate(Runner(cmp, tok, max_seq_length=12), Runner(ref, tok), TEXTS, tokenizer=tok, max_tokens=8)
    assert short["compressed_max_seq_length"] == 12 and short["full_length_tokens"] == full, short
    assert short["cos_min"] > 0.9 and short["cos_min_full_length"] < r["cos_min_full_length"] - 0.01, (short, r)
    assert "cos_min_full_length" not in slimrt.evaluate(cmp, ref, TEXTS, tokenizer=tok, max_tokens=full)


def test_encoder_values_match_metrics_on_runner_embeddings(tok):
    ref = tiny_bert()
    cmp = slimrt.compress(clone(ref), "w8a8", progress=False)
    r = slimrt.evaluate(cmp, ref, TEXTS, tokenizer=tok, batch_size=5)
    # The oracle: each text embedded alone (no padding), then slimrt.metrics.
    a, b = Runner(ref, tok, policy=KernelPolicy("module")), Runner(cmp, tok, policy=KernelPolicy("module"))
    ea = torch.cat([a.embed([t], normalize=False) for t in TEXTS])
    eb = torch.cat([b.embed([t], normalize=False) for t in TEXTS])
    want = metrics.cosine_stats(ea, eb)
    for key, val in want.items():
        assert r[key] == pytest.approx(val, abs=2e-5), (key, r[key], val)
    assert r["retrieval_top5"] == pytest.approx(metrics.retrieval_agreement(ea, eb, 5))
    assert 0.9 < r["cos_min"] < 1.0, r


def test_decoder_metrics_and_batching(tok):
    ref = tiny_llama()
    cmp = slimrt.compress(clone(ref), "w8a8", progress=False)
    texts = TEXTS[:6] + ["short text", "the model"]  # mixed lengths: padding must never be scored
    r1 = slimrt.evaluate(cmp, ref, texts, tokenizer=tok, batch_size=1)
    r4 = slimrt.evaluate(cmp, ref, texts, tokenizer=tok, batch_size=4)
    for key in ("kl", "top1", "ppl_compressed", "ppl_reference"):
        assert r1[key] == pytest.approx(r4[key], rel=1e-4), (key, r1[key], r4[key])
    assert 0 < r1["kl"] < 0.05 and r1["top1"] > 0.8, r1
    # Perplexity by hand from the HF forward of the reference, text by text.
    nll, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            logits = ref(input_ids=ids).logits
        nll += math.log(metrics.perplexity(logits, ids)) * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    assert r1["ppl_reference"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    same = slimrt.evaluate(clone(ref), ref, texts, tokenizer=tok)
    assert same["kl"] == pytest.approx(0.0, abs=1e-9) and same["top1"] == 1.0 and same["ppl_ratio"] == pytest.approx(1.0)


def test_evaluate_logits_matches_evaluate(tok):
    # A logits function of the compressed model gives what evaluate gives for the model itself.
    from slimrt.evaluate import evaluate_logits

    ref = tiny_llama()
    cmp = rank1(clone(ref))
    texts = TEXTS[:6]

    def logits(ids, mask):
        with torch.inference_mode():
            return cmp(input_ids=ids, attention_mask=mask).logits.float()

    want = slimrt.evaluate(cmp, ref, texts, tokenizer=tok, batch_size=4)
    got = evaluate_logits(logits, ref, texts, tokenizer=tok, batch_size=4)
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for key in ("kl", "top1", "ppl_compressed", "ppl_reference", "ppl_ratio", "tokens"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert evaluate_logits(logits, ref, texts, tokenizer=tok, max_length=5)["max_tokens"] == 5
    with pytest.raises(ValueError, match="shape"):
        evaluate_logits(lambda i, m: logits(i, m)[..., :-1], ref, texts, tokenizer=tok)
    with pytest.raises(ValueError, match="encoder"):
        evaluate_logits(logits, tiny_bert(), texts, tokenizer=tok)


def test_evaluate_rejects_bad_input(tok):
    m = tiny_bert()
    with pytest.raises(ValueError, match="non-empty"):
        slimrt.evaluate(m, m, [], tokenizer=tok)
    with pytest.raises(ValueError, match="kind"):
        slimrt.evaluate(m, m, TEXTS, kind="decoder", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        slimrt.evaluate(m, m, TEXTS)
    with pytest.raises(TypeError, match="Runner"):
        slimrt.evaluate(42, m, TEXTS, tokenizer=tok)


def test_gate_refuses_rank1_and_accepts_int8(tok):
    ref = tiny_bert()
    bad = rank1(clone(ref))
    with pytest.raises(QualityGateError, match=r"min cosine -?0\.\d+ < required 0.9 ") as e:
        check_quality(bad, ref, tok, min_cosine=0.9, data=TEXTS)
    assert "\n" not in str(e.value)
    good = slimrt.compress(clone(ref), "w8a8", progress=False)
    rec = check_quality(good, ref, tok, min_cosine=0.9, data=TEXTS)
    assert good.slimrt_meta["quality"] is rec
    assert rec["passed"] and rec["thresholds"] == {"min_cosine": 0.9} and rec["measured"]["cos_min"] > 0.9


def test_gate_checks_kind_and_range():
    enc = {"kind": "encoder", "cos_min": 0.5, "cos_mean": 0.6, "texts": 3}
    dec = {"kind": "decoder", "kl": 0.2, "top1": 0.5, "tokens": 10}
    with pytest.raises(ValueError, match="--max-kl"):
        gate(dec, min_cosine=0.9)
    with pytest.raises(ValueError, match="--min-cosine"):
        gate(enc, max_kl=0.1)
    with pytest.raises(QualityGateError, match="KL 0.2 > allowed 0.1"):
        gate(dec, max_kl=0.1)
    assert gate(dec, max_kl=0.3)["thresholds"] == {"max_kl": 0.3}
    with pytest.raises(QualityGateError):  # NaN never passes
        gate({**enc, "cos_min": float("nan")}, min_cosine=0.0)


# ---- CLI -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("hf") / "tiny-bert"
    tiny_bert().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def int8_ckpt(tmp_path_factory, hf_dir, tok):
    from slimrt.evaluate import load_hf

    model, _ = load_hf(hf_dir)
    slimrt.compress(model, "w8a8", progress=False)
    check_quality(model, hf_dir, tok, min_cosine=0.9, data=TEXTS)
    path = str(tmp_path_factory.mktemp("ck") / "int8")
    slimrt.save(model, path, tokenizer=tok)
    return path


def test_cli_eval_json_and_table(int8_ckpt, hf_dir, tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    assert main(["eval", int8_ckpt, "--reference", hf_dir, "--data", str(data), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    assert r["kind"] == "encoder" and r["texts"] == len(TEXTS) and 0.9 < r["cos_min"] <= 1.0
    assert r["checkpoint"] == int8_ckpt and r["reference"] == str(hf_dir) and r["data"] == str(data) and r["max_tokens"]
    assert main(["eval", int8_ckpt, "--reference", hf_dir, "--data", str(data)]) == 0
    table = capsys.readouterr().out
    assert "cos_min" in table and "retrieval_top5" in table


def test_cli_info_checkpoint_shows_quality(int8_ckpt, capsys):
    assert main(["info", int8_ckpt]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [json.loads(ln.split(None, 1)[1]) for ln in lines if ln.startswith("quality ")]
    assert len(shown) == 1, lines
    assert shown[0]["thresholds"] == {"min_cosine": 0.9} and shown[0]["measured"]["cos_min"] > 0.9
    assert not any(ln.startswith("total (") for ln in lines)  # the per-layer table is behind --verbose
    assert main(["info", int8_ckpt, "--verbose"]) == 0
    assert "total (" in capsys.readouterr().out
    assert main(["info", int8_ckpt, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["checkpoint"] == int8_ckpt and meta["compression"]["layers"] and meta["file_bytes"]


def _recipe_file(tmp_path, recipe: dict) -> str:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(slimrt.Recipe.from_dict(recipe).to_dict()), encoding="utf-8")
    return str(path)


def _compress(hf_dir, out, recipe, *flags):
    return main(["compress", hf_dir, "-o", str(out), "--recipe", recipe, "--no-progress", *flags])


def test_cli_compress_gate_refuses_then_accepts(hf_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    assert _compress(hf_dir, out, "w8a8", "--min-cosine", "0.9999999") == 3  # int8 cannot be this exact
    err = capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == [], os.listdir(tmp_path)
    assert [ln for ln in err.splitlines() if ln.startswith("slimrt: quality gate")], err
    assert _compress(hf_dir, out, "w8a8", "--min-cosine", "0.99") == 0
    meta = json.loads((out / "slimrt.json").read_text())
    assert meta["compression"]["quality"]["thresholds"] == {"min_cosine": 0.99}
    assert meta["compression"]["quality"]["measured"]["cos_min"] >= 0.99
    assert _compress(hf_dir, tmp_path / "x", "w8a8", "--max-kl", "0.1") == 2  # wrong flag for an encoder


def test_cli_compress_gate_refuses_rank1(hf_dir, tmp_path, capsys):
    from slimrt.compress import METHODS

    if "lowrank" not in METHODS:
        pytest.skip("the lowrank compressor is not on this branch yet")
    bad = _recipe_file(tmp_path, {"methods": ["lowrank"], "params": {"lowrank": {"rank": 1, "method": "svd"}}})
    out = tmp_path / "ck"
    assert _compress(hf_dir, out, bad, "--min-cosine", "0.9") == 3
    assert not out.exists()
    assert _compress(hf_dir, out, "w8a8", "--min-cosine", "0.9") == 0


def test_cli_compress_distill_steps(hf_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    assert _compress(hf_dir, out, "w8a8", "--distill-steps", "2", "--min-cosine", "0.9") == 0
    comp = json.loads((out / "slimrt.json").read_text())["compression"]
    assert comp["distill"]["steps"] == 2 and comp["quality"]["passed"]
    assert main(["info", str(out)]) == 0
    assert "distill " in capsys.readouterr().out


@pytest.mark.parametrize("threshold,code", [("0.999999", 3), ("-1", 0)])
def test_cli_gate_exit_code(hf_dir, tmp_path, capsys, threshold, code):
    """distill --drop-layers with 0 steps: a 1-layer copy of a 2-layer model misses a strict gate."""
    out = tmp_path / "student"
    argv = ["distill", hf_dir, "-o", str(out), "--drop-layers", "0", "--steps", "0", "--no-progress",
            "--min-cosine", threshold]
    assert main(argv) == code
    err = capsys.readouterr().err
    if code == 3:
        assert not out.exists() and os.listdir(tmp_path) == []
        line = [ln for ln in err.splitlines() if "quality gate" in ln]
        assert len(line) == 1 and "< required 0.999999" in line[0], err
    else:
        meta = json.loads((out / "slimrt.json").read_text())
        assert meta["compression"]["quality"]["thresholds"] == {"min_cosine": -1.0}


def test_cli_compress_decoder_gate_max_kl(tmp_path, tok, capsys):
    src = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "ck"
    data = tmp_path / "eval.txt"
    data.write_text("\n".join(TEXTS), encoding="utf-8")
    assert _compress(str(src), out, "w8a8", "--max-kl", "1e-12", "--eval-data", str(data)) == 3
    assert "quality gate: KL" in capsys.readouterr().err and not out.exists()
    assert _compress(str(src), out, "w8a8", "--max-kl", "0.5", "--eval-data", str(data)) == 0
    q = json.loads((out / "slimrt.json").read_text())["compression"]["quality"]
    assert q["thresholds"] == {"max_kl": 0.5} and 0 < q["measured"]["kl"] <= 0.5 and q["data"] == "user data"
