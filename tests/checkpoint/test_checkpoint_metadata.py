"""slimrt.json integrity (RELIABILITY 6, 10): the digest of its canonical form, the format-1 files
that predate it, and the type and range checks of the config values the runner reads.

Before the digest, each of the one-field edits below loaded silently and changed the outputs
(max |diff| 0.012 to 0.238 on the audit's MiniLM checkpoint).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import slimrt
from slimrt import checkpoint
from slimrt.checkpoint import format as fmt
from slimrt.errors import CheckpointError
from slimrt.nn import Int8Linear

from test_runner import tiny_bert, tiny_gpt2, tiny_llama, to_int8

META = "slimrt.json"


@pytest.fixture(scope="module")
def bert_ck(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "bert"
    slimrt.save(to_int8(tiny_bert()), path)
    return path


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit_text(ck, old: str, new: str) -> None:
    text = (ck / META).read_text()
    assert old in text, f"{old!r} is not in {META}"
    (ck / META).write_text(text.replace(old, new, 1))


# The audit's edits: each is a valid value, so only the digest can tell that the file changed.
EDITS = [
    ("hidden_act", '"hidden_act": "gelu"', '"hidden_act": "relu"'),
    ("layer_norm_eps", '"layer_norm_eps": 1e-12', '"layer_norm_eps": 0.5'),
    ("num_attention_heads", '"num_attention_heads": 4', '"num_attention_heads": 2'),
    ("module_mode", '"mode": "w8a8"', '"mode": "w8"'),
]


@pytest.mark.parametrize("field, old, new", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_field_fails_the_metadata_checksum(bert_ck, tmp_path, field, old, new):
    ck = _copy(bert_ck, tmp_path / "ck")
    _edit_text(ck, old, new)
    with pytest.raises(CheckpointError, match=r"slimrt\.json: metadata checksum mismatch") as e:
        checkpoint.load_model(ck)
    assert str(ck) in str(e.value)


def test_reformatting_keeps_the_digest(bert_ck, tmp_path):
    # The digest covers the values, not the layout: re-indented, reordered JSON still loads.
    ck = _copy(bert_ck, tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    (ck / META).write_text(json.dumps(dict(reversed(list(meta.items()))), indent=4))
    checkpoint.load_model(ck)


def test_format_1_without_digest_still_loads(bert_ck, tmp_path):
    ck = _copy(bert_ck, tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    assert meta["format_version"] == fmt.FORMAT_VERSION == 2 and fmt.DIGEST_FIELD in meta
    del meta[fmt.DIGEST_FIELD]
    meta["format_version"] = 1
    (ck / META).write_text(json.dumps(meta))
    x = torch.randint(0, 300, (1, 9))
    want = checkpoint.load_model(bert_ck).model(x).last_hidden_state
    assert torch.equal(checkpoint.load_model(ck).model(x).last_hidden_state, want)


def test_format_2_requires_the_digest(bert_ck, tmp_path):
    ck = _copy(bert_ck, tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    del meta[fmt.DIGEST_FIELD]
    (ck / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"field 'meta_sha256' is missing; format version 2 requires"):
        checkpoint.load_model(ck)


@pytest.mark.parametrize("value", ["abc", 7, "0" * 64 + "0"], ids=["short", "int", "long"])
def test_malformed_digest_is_named(bert_ck, tmp_path, value):
    ck = _copy(bert_ck, tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    meta[fmt.DIGEST_FIELD] = value
    (ck / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"field 'meta_sha256' must be a lowercase hex sha256"):
        checkpoint.load_model(ck)


def test_a_number_beyond_float_range_is_named(bert_ck, tmp_path):
    ck = _copy(bert_ck, tmp_path / "ck")
    _edit_text(ck, '"layer_norm_eps": 1e-12', '"layer_norm_eps": 1e999')  # parses to inf
    with pytest.raises(CheckpointError, match=r"slimrt\.json holds a number outside the float range"):
        checkpoint.load_model(ck)


# ---- config values the runner reads: type and range, named ------------------------------------------

def _restamped(src, dst, edit):
    ck = _copy(src, dst)
    meta = json.loads((ck / META).read_text())
    edit(meta["model"]["config"])
    (ck / META).write_text(json.dumps(fmt.stamp(meta)))  # consistent: only the value check can refuse it
    return ck


BERT_BAD = [
    ("num_attention_heads", 0, "an integer from 1 to"),
    ("num_attention_heads", -4, "an integer from 1 to"),
    ("num_attention_heads", "4", "an integer from 1 to"),
    ("num_attention_heads", True, "an integer from 1 to"),
    ("num_attention_heads", 3, "a divisor of hidden_size=64"),
    ("hidden_size", 2**40, "an integer from 1 to"),
    ("layer_norm_eps", -1e-12, r"a number in \(0, 0\.1\]"),
    ("layer_norm_eps", 0, r"a number in \(0, 0\.1\]"),
    ("layer_norm_eps", 0.5, r"a number in \(0, 0\.1\]"),
    ("layer_norm_eps", "NaN", r"a number in \(0, 0\.1\]"),
    ("hidden_act", "os.system", "an activation transformers defines"),
    ("hidden_act", ["gelu"], "an activation transformers defines"),
    ("position_embedding_type", "rotary", "one of absolute"),
    ("model_type", "gpt2", "'bert', the model type of the stored architecture"),
    ("num_hidden_layers", -1, "a non-negative integer"),
    ("vocab_size", 1.5, "an integer from 1 to"),
    ("tie_word_embeddings", 1, "true or false"),
]


@pytest.mark.parametrize("thin", [False, True], ids=["hf_skeleton", "thin"])
@pytest.mark.parametrize("key, value, expected", BERT_BAD,
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in BERT_BAD])
def test_bad_config_value_is_a_checkpoint_error_naming_the_field(bert_ck, tmp_path, key, value, expected, thin):
    # thin: the skeleton built without transformers (slimrt.load's default) checks the same values.
    ck = _restamped(bert_ck, tmp_path / "ck", lambda c: c.update({key: value}))
    with pytest.raises(CheckpointError, match=rf"slimrt\.json: field 'model\.config\.{key}' is .*; expected "
                                              rf"{expected}") as e:
        checkpoint.load_model(ck, thin=thin)
    assert str(ck) in str(e.value)


@pytest.mark.parametrize("make, key, value, expected", [
    (tiny_llama, "num_key_value_heads", 3, "a divisor of num_attention_heads=4"),
    (tiny_llama, "rms_norm_eps", math.inf, r"a number in \(0, 0\.1\]"),
    (tiny_llama, "rope_theta", -10000.0, "a positive number"),
    (tiny_llama, "rope_scaling", {"rope_type": "linear", "factor": 0}, "a positive number"),
    (tiny_gpt2, "layer_norm_epsilon", 0.0, r"a number in \(0, 0\.1\]"),
    (tiny_gpt2, "activation_function", "gelu_evil", "an activation transformers defines"),
    (tiny_gpt2, "n_head", 5, "a divisor of n_embd=64"),
], ids=["llama_kv_heads", "llama_eps_inf", "llama_rope_theta", "llama_rope_factor", "gpt2_eps", "gpt2_act",
        "gpt2_heads"])
def test_bad_decoder_config_value_is_named(tmp_path, make, key, value, expected):
    slimrt.save(make(), tmp_path / "src")
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no inf: the file says "Infinity"
        value = "Infinity"
    ck = _restamped(tmp_path / "src", tmp_path / "ck", lambda c: c.update({key: value}))
    for thin in (False, True):
        with pytest.raises(CheckpointError, match=rf"field 'model\.config\.{key}(\.\w+)?' is .*; expected {expected}"):
            checkpoint.load_model(ck, thin=thin)


def test_relative_position_embedding_is_named_by_file(tmp_path):
    # transformers 4 runs relative_key BERTs: a valid checkpoint that the runner refuses, naming it.
    # transformers 5 dropped them (the value then silently means "absolute"): a CheckpointError.
    import transformers
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                                 vocab_size=300, max_position_embeddings=64, position_embedding_type="relative_key"))
    slimrt.save(model.eval(), tmp_path / "ck")
    if int(transformers.__version__.split(".")[0]) >= 5:
        with pytest.raises(CheckpointError, match=r"ck/slimrt\.json: field 'model\.config\.position_embedding_type' "
                                                  r"is 'relative_key'; expected one of absolute"):
            slimrt.Runner.from_checkpoint(tmp_path / "ck")
        return
    checkpoint.load_model(tmp_path / "ck")
    with pytest.raises(ValueError, match=r"ck: Runner: BERT position_embedding_type='relative_key' is not supported"):
        slimrt.Runner.from_checkpoint(tmp_path / "ck")


def test_sequential_norm_epsilon_must_be_positive(tmp_path):
    slimrt.save(nn.Sequential(Int8Linear.from_linear(nn.Linear(8, 8)), nn.LayerNorm(8)), tmp_path / "src")
    ck = _copy(tmp_path / "src", tmp_path / "ck")
    meta = json.loads((ck / META).read_text())
    meta["model"]["layers"][1]["eps"] = -1e-5
    (ck / META).write_text(json.dumps(fmt.stamp(meta)))
    with pytest.raises(CheckpointError, match=r"field 'model\.layers\[1\]\.eps' must be a positive finite number"):
        checkpoint.load_model(ck)
