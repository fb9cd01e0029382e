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
def test_a_thin_model_saves_to_a_checkpoint_that_loads_like_its_source(tmp_path, family):
    """slimrt.save(slimrt.load(d).model, e): e is a Hugging Face checkpoint again (not 'custom'), both
    load paths run it, with the same outputs as d (slimrt serve's CLI test saves a loaded runner's model)."""
    src = _save(tiny_llama() if family == "llama" else tiny_bert(), tmp_path / "src", "w8")
    rt = slimrt.load(src)
    again = tmp_path / "again"
    slimrt.save(rt.model, again, tokenizer=rt.tokenizer)
    meta = slimrt.checkpoint.read_metadata(again)
    assert meta["model"]["kind"] == "hf" and meta["model"]["architecture"] == rt.model.architecture
    thin, full = slimrt.load(again), slimrt.load(again, thin=False)
    assert type(thin.model).__name__ == "ThinModel" and type(full.model).__name__ != "ThinModel"
    if family == "llama":
        assert thin.generate_ids([PROMPT], 10) == rt.generate_ids([PROMPT], 10) == full.generate_ids([PROMPT], 10)
    else:
        texts = ["the runner streams text", "as it is decoded"]
        assert torch.equal(thin.embed(texts), rt.embed(texts)) and torch.equal(full.embed(texts), rt.embed(texts))


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


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_a_thin_model_saves_as_the_hf_checkpoint_it_came_from(tmp_path, family):
    """slimrt.save(slimrt.load(ckpt).model) writes a checkpoint slimrt.load reads (kind "hf", not "custom")."""
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}[family]()
    _save(model, tmp_path / "a", "w8")
    rt = slimrt.load(tmp_path / "a")
    assert type(rt.model).__name__ == "ThinModel"
    slimrt.save(rt.model, tmp_path / "b", tokenizer=rt.tokenizer)
    meta = slimrt.checkpoint.read_metadata(tmp_path / "b")
    assert meta["model"] == slimrt.checkpoint.read_metadata(tmp_path / "a")["model"]
    again = slimrt.load(tmp_path / "b")
    if family == "bert":
        ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
        torch.testing.assert_close(again.embed_ids(ids, mask), rt.embed_ids(ids, mask), rtol=0, atol=0)
    else:
        assert again.generate_ids([[5, 6, 7]], 6) == rt.generate_ids([[5, 6, 7]], 6)
