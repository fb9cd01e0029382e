"""Thin loading: the families slimrt's lean forwards run load without transformers, with the same outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import slimrt
from slimrt.checkpoint import load_model
from slimrt.errors import CheckpointError
from test_runner import byte_bpe_tokenizer, tiny_bert, tiny_gpt2, tiny_llama

PROMPT = [5, 17, 33, 2, 99, 41, 7]


def _save(model, path, recipe):
    if recipe is not None:
        slimrt.compress(model, recipe, progress=False)
    slimrt.save(model, path, tokenizer=byte_bpe_tokenizer())
    return path


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("recipe", [None, "w8", "w8a8"])
def test_thin_decoder_generates_what_the_transformers_skeleton_does(tmp_path, family, recipe):
    model = tiny_llama() if family == "llama" else (tiny_gpt2() if family == "gpt2" else
                                                    _tiny_qwen3())
    path = _save(model, tmp_path / "ck", recipe)
    thin, full = slimrt.load(path), slimrt.load(path, thin=False)
    assert type(thin.model).__name__ == "ThinModel" and type(full.model).__name__ != "ThinModel"
    assert thin.path == full.path, (thin.native_reason, full.native_reason)
    assert thin.generate_ids([PROMPT], 10) == full.generate_ids([PROMPT], 10)
    assert thin.generate("the runner", 6) == full.generate("the runner", 6)


def _tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300,
                                        max_position_embeddings=64)).eval()


@pytest.mark.parametrize("recipe", [None, "w8a8"])
def test_thin_encoder_embeds_what_the_transformers_skeleton_does(tmp_path, recipe):
    path = _save(tiny_bert(), tmp_path / "ck", recipe)
    thin, full = slimrt.load(path), slimrt.load(path, thin=False)
    texts = ["the runner streams text", "héllo wörld", "as it is decoded"]
    assert torch.equal(thin.embed(texts), full.embed(texts))


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_thin_model_saves_as_the_model_it_stands_for(tmp_path, family):
    """slimrt.save of a thin-loaded model writes the checkpoint's own "model" section, so the copy loads
    thin or as transformers' model and runs the same (the serve CLI test re-saves a loaded model)."""
    model = tiny_llama() if family == "llama" else tiny_bert()
    thin = slimrt.load(_save(model, tmp_path / "ck", "w8"))
    slimrt.save(thin.model, tmp_path / "copy", tokenizer=thin.tokenizer)
    for again in (slimrt.load(tmp_path / "copy"), slimrt.load(tmp_path / "copy", thin=False)):
        if family == "llama":
            assert again.generate_ids([PROMPT], 8) == thin.generate_ids([PROMPT], 8)
        else:
            assert torch.equal(again.embed(["the runner streams text"]), thin.embed(["the runner streams text"]))


def test_thin_load_imports_no_transformers(tmp_path):
    enc = _save(tiny_bert(), tmp_path / "enc", "w8a8")
    dec = _save(tiny_llama(), tmp_path / "dec", "w8")
    code = (f"import sys, slimrt; e = slimrt.load({str(enc)!r}); e.embed(['x']); d = slimrt.load({str(dec)!r}); "
            "d.generate('the runner', 3); print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]", f"thin load imported transformers modules: {r.stdout[:500]}"


def test_a_missing_layer_is_an_error_not_a_smaller_model(tmp_path):
    model = tiny_llama()
    del model.model.layers[1].mlp.up_proj  # the checkpoint then lacks this layer's tensors
    slimrt.save(model, tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"no tensors for 'model.layers.1.mlp.up_proj'"):
        load_model(tmp_path / "ck", thin=True)


def test_other_architectures_keep_the_transformers_skeleton(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=32)).eval()
    slimrt.save(mlm, tmp_path / "ck")
    assert type(load_model(tmp_path / "ck", thin=True).model).__name__ == "BertForMaskedLM"
