"""slimrt.distill: the differentiable paths of slimrt modules, loss reduction, determinism,
interruption (nothing kept, nothing written), drop-layers students, save/load of the result."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import slimrt  # noqa: E402
from slimrt.cli import main  # noqa: E402
from slimrt.distill import drop_layers, parse_keep, trainable  # noqa: E402
from slimrt.nn import Int8Linear, LowRankLinear  # noqa: E402
from slimrt.nn._train import trainable_tensors  # noqa: E402
from slimrt.runner import Runner  # noqa: E402

from quality_helpers import TEXTS, clone, state, tiny_bert, tiny_gpt2, tiny_llama, word_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


# ---- the differentiable path computes the kernels' function -------------------------------------

def _modules():
    torch.manual_seed(0)
    lin = nn.Linear(67, 33)
    return [
        ("int8-w8a8", Int8Linear.from_linear(lin, "w8a8")),
        ("int8-w8", Int8Linear.from_linear(lin, "w8")),
        ("int8-smooth", Int8Linear.from_weight(lin.weight, lin.bias, "w8a8", smooth=torch.rand(67) + 0.5)),
        ("lowrank", LowRankLinear.from_linear(lin, 7)),
        ("lowrank-int8", LowRankLinear.from_linear(lin, 7, quantized=True)),
        ("lowrank-int8-w8", LowRankLinear.from_linear(lin, 7, quantized=True, mode="w8")),
    ]


@pytest.mark.parametrize("name,mod", _modules(), ids=[n for n, _ in _modules()])
def test_differentiable_path_matches_kernel_and_trains(name, mod):
    x = torch.randn(17, 67)
    with torch.no_grad():
        want = mod(x)
    params = trainable_tensors(mod)
    assert params, name
    for t in params.values():
        t.requires_grad_(True)
    try:
        got = mod(x)  # grad enabled + trainable tensors -> plain PyTorch path
        assert got.requires_grad
        err = (got - want).abs().max().item()
        assert err <= 1e-4 * want.abs().max().item() + 1e-5, f"{name}: differentiable path differs by {err}"
        got.square().sum().backward()
        for tname, t in params.items():
            assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and t.grad.abs().sum() > 0, tname
        xg = x.clone().requires_grad_(True)  # straight-through: d/dx exists (the rounding passes it)
        mod(xg).sum().backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0
    finally:
        for t in params.values():
            t.requires_grad_(False)


def test_inference_path_unchanged_when_nothing_requires_grad():
    mod = Int8Linear.from_linear(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    y = mod(x)  # grad mode on, nothing requires grad: the kernel runs (no graph)
    assert not y.requires_grad


# ---- what trains ------------------------------------------------------------------------------------

def test_trainable_excludes_embeddings_and_integer_weights():
    dense_head = slimrt.compress(tiny_llama(), slimrt.Recipe(methods=("w8a8",)), progress=False)
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable(dense_head))
    m = slimrt.compress(tiny_llama(), "w8a8", progress=False)  # the preset quantizes the head: its scales train
    names = set(trainable(m))
    assert "lm_head.w_scale" in names and not any("embed_tokens" in n for n in names), names
    assert any(n.endswith("q_proj.w_scale") for n in names) and any(n.endswith("norm.weight") for n in names)
    assert not any(n.endswith("w_q") for n in names)


# ---- the loop ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "llama"])
def test_distill_reduces_loss_and_is_reproducible(family, tok):
    teacher = tiny_bert() if family == "bert" else tiny_llama()
    runs = []
    for _ in range(2):
        student = slimrt.compress(clone(teacher), "w8a8", progress=False)
        frozen = {k: v for k, v in state(student).items() if v.dtype == torch.int8}
        rec = slimrt.distill(student, teacher, TEXTS, steps=12, lr=3e-3, seed=3, tokenizer=tok, batch_size=4,
                             progress=False)
        assert rec["loss_after"] < rec["loss_before"], rec
        assert student.slimrt_meta["distill"] is rec
        for k, v in frozen.items():  # integer weights never change
            assert torch.equal(student.state_dict()[k], v), k
        # slimrt buffers are frozen again; parameters keep the flags they came with
        assert not any(t.requires_grad for t in trainable(student).values() if not isinstance(t, nn.Parameter))
        assert all(p.requires_grad for p in student.parameters())
        runs.append(state(student))
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), f"{k} differs between two runs with the same seed"


def test_distill_improves_lowrank_student_embeddings(tok):
    teacher = tiny_bert()
    student = clone(teacher)
    for parent in list(student.encoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, LowRankLinear.from_linear(child, 8))
    before = slimrt.evaluate(student, teacher, TEXTS, tokenizer=tok)["cos_mean"]
    slimrt.distill(student, teacher, TEXTS, steps=20, lr=3e-3, tokenizer=tok, batch_size=4, progress=False)
    after = slimrt.evaluate(student, teacher, TEXTS, tokenizer=tok)["cos_mean"]
    assert after > before, (before, after)


def test_interrupted_distill_restores_the_student(tok, monkeypatch):
    teacher = tiny_bert()
    student = slimrt.compress(clone(teacher), "w8a8", progress=False)
    before = state(student)
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(KeyboardInterrupt):
        slimrt.distill(student, teacher, TEXTS, steps=10, lr=1e-2, tokenizer=tok, batch_size=4, progress=False)
    after = state(student)
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} was left half-trained"
    assert "distill" not in student.slimrt_meta
    assert not any(t.requires_grad for t in trainable(student).values() if not isinstance(t, nn.Parameter))


def test_interrupted_cli_distill_writes_nothing(tok, tmp_path, monkeypatch):
    src = tmp_path / "teacher"
    tiny_bert().save_pretrained(src)
    tok.save_pretrained(src)
    out_parent = tmp_path / "out"
    out_parent.mkdir()

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    code = main(["distill", str(src), "-o", str(out_parent / "student"), "--drop-layers", "0", "--steps", "5",
                 "--no-progress"])
    assert code == 130
    assert os.listdir(out_parent) == [], os.listdir(out_parent)


def test_distill_argument_errors(tok):
    m = tiny_bert()
    with pytest.raises(ValueError, match="steps"):
        slimrt.distill(clone(m), m, TEXTS, steps=-1, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        slimrt.distill(clone(m), m, TEXTS, steps=1)
    with pytest.raises(ValueError, match="layer_map"):
        slimrt.distill(tiny_bert(layers=1), m, TEXTS, steps=1, tokenizer=tok)


# ---- shallower students ---------------------------------------------------------------------------

def test_parse_keep():
    assert parse_keep("every-other", 6) == [1, 3, 5]
    assert parse_keep("0,2", 4) == [1, 3]
    with pytest.raises(ValueError, match="outside"):
        parse_keep("7", 6)
    with pytest.raises(ValueError, match="leaves no layer"):
        parse_keep([0, 1], 2)
    with pytest.raises(ValueError, match="every-other"):
        parse_keep("odd", 6)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_drop_layers_student_builds_runs_and_reloads(family, tok, tmp_path):
    teacher = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[family](layers=4)
    student = drop_layers(teacher, "every-other")
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert student.slimrt_kept_layers == [1, 3]
    rt = Runner(student, tok)
    if family == "bert":
        emb = rt.embed(TEXTS[:3])
        assert emb.shape == (3, 64) and bool(torch.isfinite(emb).all())
    else:
        # The lean decode loop (KV cache slots = renumbered layer_idx) matches the HF forward.
        ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
        new = rt.generate_ids([ids[0].tolist()], max_new_tokens=4)[0]
        with torch.no_grad():
            hf = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                  pad_token_id=0)[0, ids.shape[1]:].tolist()
        assert new == hf
    rec = slimrt.distill(student, teacher, TEXTS, steps=3, lr=1e-3, tokenizer=tok, batch_size=4, progress=False)
    assert rec["loss_after"] < rec["loss_before"], rec
    student.slimrt_meta = {"student": {"kept_layers": [1, 3]}, "distill": rec}
    slimrt.save(student, tmp_path / "s", tokenizer=tok)
    loaded = slimrt.checkpoint.load_model(tmp_path / "s").model
    assert loaded.config.num_hidden_layers == 2
    again = slimrt.distill(loaded, teacher, TEXTS, steps=1, lr=1e-9, tokenizer=tok, batch_size=4, progress=False)
    assert again["loss_before"] == pytest.approx(rec["loss_after"], rel=1e-4)  # from slimrt_meta["student"]
    loaded = slimrt.checkpoint.load_model(tmp_path / "s").model
    ids = torch.tensor([tok(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        a, b = student(input_ids=ids), loaded(input_ids=ids)
    key = "last_hidden_state" if family == "bert" else "logits"
    assert torch.equal(a[key], b[key])


def test_distilled_compressed_model_saves_and_loads(tok, tmp_path):
    teacher = tiny_bert()
    student = slimrt.compress(clone(teacher), "w8a8", progress=False)
    slimrt.distill(student, teacher, TEXTS, steps=4, lr=3e-3, tokenizer=tok, batch_size=4, progress=False)
    slimrt.save(student, tmp_path / "ck", tokenizer=tok)
    rt = slimrt.load(tmp_path / "ck")
    assert rt.model.slimrt_meta["distill"]["steps"] == 4
    want = Runner(student, tok).embed(TEXTS)
    assert torch.equal(rt.embed(TEXTS), want)
