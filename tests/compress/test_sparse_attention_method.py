"""Recipe method "sparse_attention": validation, checkpoint round trip, Runner equality and bounded KV cache.

Reference for a small window: the Hugging Face forward of the full context with the equivalent dense
boolean 4-D mask (slimrt.attention.token_rule), i.e. an independent implementation of the same math.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slimrt  # noqa: E402
from slimrt.attention import sliding_window_mask, token_rule  # noqa: E402
from slimrt.errors import CheckpointError  # noqa: E402
from slimrt.models._common import KVCache, WindowKVCache  # noqa: E402
from slimrt.recipe import Recipe  # noqa: E402
from slimrt.runner import Runner  # noqa: E402

from test_runner import tiny_bert, tiny_gpt2, tiny_llama  # noqa: E402

transformers.logging.set_verbosity_error()
FAMILIES = {"llama": tiny_llama, "gpt2": tiny_gpt2}
PROMPT = [5, 17, 33, 2, 99, 41, 7, 250, 3, 18, 77]


def recipe(window: int, num_global: int = 2, block_size: int = 4, *more: str) -> dict:
    return {"methods": ["sparse_attention", *more],
            "params": {"sparse_attention": {"window": window, "num_global": num_global, "block_size": block_size}}}


def sparse(family: str, window: int, num_global: int = 2, block_size: int = 4, *more: str):
    model = FAMILIES[family]()
    slimrt.compress(model, recipe(window, num_global, block_size, *more), progress=False)
    return model


# ---- recipe validation ----

@pytest.mark.parametrize("params, field", [
    ({}, "window"), ({"window": 0}, "window"), ({"window": -3}, "window"), ({"window": 2.5}, "window"),
    ({"window": True}, "window"), ({"window": 8, "num_global": -1}, "num_global"),
    ({"window": 8, "block_size": 0}, "block_size"), ({"window": 8, "block_size": "64"}, "block_size"),
    ({"window": 8, "stride": 2}, "stride"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        Recipe(methods=("sparse_attention",), params={"sparse_attention": params})


def test_defaults_and_json_round_trip():
    r = Recipe(methods=("sparse_attention", "w8"), params={"sparse_attention": {"window": 16}})
    assert r.params["sparse_attention"] == {"window": 16, "num_global": 4, "block_size": 64}
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# ---- compress, report, meta, checkpoint ----

def test_compress_records_pattern_in_config_meta_and_report():
    model = sparse("llama", 6, 2, 4)
    assert model.config.slimrt_attention == {"kind": "sliding_window", "window": 6, "num_global": 2, "block_size": 4}
    meta = model.slimrt_meta
    assert meta["recipe"]["params"]["sparse_attention"] == {"window": 6, "num_global": 2, "block_size": 4}
    assert meta["model_methods"] == [{"method": "sparse_attention", "kernel": "block_sparse_attention",
                                      "kind": "sliding_window", "window": 6, "num_global": 2, "block_size": 4,
                                      "kv_cache_slots": 8}]
    assert meta["layers"] == [] and meta["fallbacks"] == {}  # no layer was touched, and none claims to be
    assert "model-level: sparse_attention" in slimrt.report(model, echo=False)


def test_bert_gets_a_fallback_not_a_pattern():
    model = tiny_bert()
    slimrt.compress(model, recipe(8), progress=False)
    assert getattr(model.config, "slimrt_attention", None) is None
    assert "sparse_attention" in model.slimrt_meta["fallbacks"]["(model)"]
    model.config.slimrt_attention = {"kind": "sliding_window", "window": 8, "num_global": 0, "block_size": 4}
    with pytest.raises(ValueError, match="decoders only"):
        Runner(model)


def test_checkpoint_round_trip_keeps_pattern_and_output(tmp_path):
    model = sparse("llama", 5, 2, 4, "w8")
    want = Runner(model).generate_ids([PROMPT], 20, eos=False)
    slimrt.save(model, tmp_path / "ckpt")
    rt = Runner.from_checkpoint(tmp_path / "ckpt")
    assert rt.model.config.slimrt_attention == model.config.slimrt_attention
    assert rt.model.slimrt_meta["model_methods"] == model.slimrt_meta["model_methods"]
    assert rt.generate_ids([PROMPT], 20, eos=False) == want


@pytest.mark.parametrize("bad, field", [
    ({"kind": "sliding_window", "window": 0, "num_global": 2, "block_size": 4}, "window"),
    ({"kind": "sliding_window", "window": 4, "num_global": -1, "block_size": 4}, "num_global"),
    ({"kind": "sliding_window", "window": 4, "num_global": 1, "block_size": 10 ** 9}, "block_size"),
    ({"kind": "dilated", "window": 4, "num_global": 1, "block_size": 4}, "kind"),
    ({"kind": "sliding_window", "window": 4, "num_global": 1, "block_size": 4, "x": 1}, "x"),
    ([4, 1], "slimrt_attention"),
])
def test_bad_pattern_in_checkpoint_is_a_checkpoint_error(tmp_path, bad, field):
    model = sparse("gpt2", 5)
    slimrt.save(model, tmp_path / "ckpt")
    meta_path = os.path.join(tmp_path, "ckpt", "slimrt.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    meta["model"]["config"]["slimrt_attention"] = bad
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(slimrt.checkpoint.format.stamp(meta), f)  # the digest matches the edit
    with pytest.raises(CheckpointError, match=f"slimrt_attention.*{field}" if field != "slimrt_attention"
                       else "slimrt_attention"):
        slimrt.checkpoint.load_model(tmp_path / "ckpt")


# ---- runner equality ----

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_window_covering_everything_equals_dense(family):
    dense = Runner(FAMILIES[family]()).generate_ids([PROMPT, PROMPT[::-1]], 25, eos=False)
    # window >= total length: the ring never wraps; block_size 4 cuts the prompt into odd blocks.
    assert Runner(sparse(family, 64, 2, 4)).generate_ids([PROMPT, PROMPT[::-1]], 25, eos=False) == dense
    assert Runner(sparse(family, 36, 0, 8)).generate_ids([PROMPT, PROMPT[::-1]], 25, eos=False) == dense


def sparse_logits(rt: Runner, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and every step's logits from the Runner's own loop (the lean forward it runs)."""
    logits: list[torch.Tensor] = []
    fwd = rt.lean.forward

    def spy(*args, **kwargs):
        out = fwd(*args, **kwargs)
        logits.append(out.clone())
        return out

    rt.lean.forward = spy
    try:
        tokens = rt.generate_ids([prompt], n, eos=False)[0]
    finally:
        del rt.lean.forward
    return tokens, logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("window, num_global, block_size", [(5, 2, 4), (3, 0, 2), (7, 3, 16)])
def test_small_window_matches_hf_with_the_dense_mask(family, window, num_global, block_size):
    model = sparse(family, window, num_global, block_size)
    n = 30  # prompt 11 + 30 new tokens: the ring wraps many times
    tokens, logits = sparse_logits(Runner(model), PROMPT, n)
    assert len(logits) == n
    seq = torch.tensor([PROMPT + tokens])
    total = seq.shape[1] - 1  # the last token is sampled, never fed
    allowed = token_rule(total, total, True, window, num_global)
    with torch.no_grad():
        ref = model(seq[:, :total], attention_mask=allowed[None, None]).logits[0]  # (total, V)
    for step, got in enumerate(logits):
        pos = len(PROMPT) - 1 + step
        torch.testing.assert_close(got[0], ref[pos], atol=2e-4, rtol=1e-4, msg=f"step {step}")
    # and the mask really changes the result (a test that could fail)
    with torch.no_grad():
        dense_ref = model(seq[:, :total]).logits[0]
    assert (dense_ref[-1] - ref[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("window, num_global", [(5, 2), (3, 0), (64, 2)])
def test_left_padded_batch_equals_one_by_one(family, window, num_global):
    rt = Runner(sparse(family, window, num_global, 4))
    prompts = [PROMPT, PROMPT[:3], PROMPT[4:], [250]]
    alone = [rt.generate_ids([p], 20, eos=False)[0] for p in prompts]
    orig = rt.lean.new_cache

    def poisoned(batch, max_len):  # large finite junk in every slot: masked slots must weigh exactly 0
        cache = orig(batch, max_len)
        for t in cache.k + cache.v:
            t.copy_(torch.randn(t.shape) * 1e4)
        return cache

    rt.lean.new_cache = poisoned
    assert rt.generate_ids(prompts, 20, eos=False) == alone


# ---- bounded cache ----

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cache_is_sinks_plus_window_whatever_the_generation_length(family):
    rt = Runner(sparse(family, 6, 2, 4))
    sizes = {}
    orig = rt.lean.new_cache

    def spy(batch, max_len):
        cache = orig(batch, max_len)
        sizes[max_len] = cache
        return cache

    rt.lean.new_cache = spy
    for n in (10, 40):
        rt.generate_ids([PROMPT], n, eos=False)
    short, long = sizes[len(PROMPT) + 10], sizes[len(PROMPT) + 40]
    assert isinstance(long, WindowKVCache)
    assert all(t.shape[2] == 2 + 6 for t in long.k + long.v)
    assert short.nbytes() == long.nbytes()
    dense = Runner(FAMILIES[family]()).lean.new_cache(1, len(PROMPT) + 40)
    assert isinstance(dense, KVCache) and dense.nbytes() == long.nbytes() * (len(PROMPT) + 40) // 8


# ---- combination with int8 ----

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_combined_with_w8_runs_int8_and_sparse(family):
    model = sparse(family, 5, 2, 4, "w8")
    assert {r["method"] for r in model.slimrt_meta["layers"]} == {"w8"}
    assert model.config.slimrt_attention["window"] == 5
    tokens, logits = sparse_logits(Runner(model), PROMPT, 16)
    seq = torch.tensor([PROMPT + tokens])
    total = seq.shape[1] - 1
    with torch.no_grad():  # the HF forward of the same int8 model calls the same Int8Linear modules
        ref = model(seq[:, :total], attention_mask=token_rule(total, total, True, 5, 2)[None, None]).logits[0]
    for step, got in enumerate(logits):
        torch.testing.assert_close(got[0], ref[len(PROMPT) - 1 + step], atol=2e-3, rtol=1e-3)


def test_decode_mask_matches_the_ring_contents():
    """The bounded ring with a full mask equals sliding_window_mask over the whole history."""
    w, g = 5, 2
    for p in range(0, 20):
        rule = sliding_window_mask(1, p + 1, w, g, causal=True, block_size=4).to_dense(1, p + 1)[0, 0, 0]
        assert int(rule.sum()) == min(p + 1, w + g)


def test_combined_with_lowrank_and_prune_heads():
    """Low-rank factors and per-layer pruned KV heads run through the bounded cache too."""
    model = tiny_llama()
    slimrt.compress(model, {"methods": ["prune_heads", "sparse_attention", "lowrank"],
                            "params": {"prune_heads": {"fraction": 0.5}, "lowrank": {"ratio": 0.5, "method": "svd"},
                                       "sparse_attention": {"window": 4, "num_global": 1, "block_size": 4}}},
                    progress=False)
    assert {r["method"] for r in model.slimrt_meta["layers"]} == {"prune_heads", "lowrank"}
    tokens, logits = sparse_logits(Runner(model), PROMPT, 12)
    seq = torch.tensor([PROMPT + tokens])
    total = seq.shape[1] - 1
    with torch.no_grad():
        ref = model(seq[:, :total], attention_mask=token_rule(total, total, True, 4, 1)[None, None]).logits[0]
    for step, got in enumerate(logits):
        torch.testing.assert_close(got[0], ref[len(PROMPT) - 1 + step], atol=2e-4, rtol=1e-4)


def test_bfloat16_runs_and_float16_is_refused_up_front():
    dense = Runner(tiny_llama().to(torch.bfloat16)).generate_ids([PROMPT], 12, eos=False)
    assert Runner(sparse("llama", 64).to(torch.bfloat16)).generate_ids([PROMPT], 12, eos=False) == dense
    with pytest.raises(TypeError, match="float16"):
        Runner(sparse("gpt2", 8).to(torch.float16))


def test_evaluate_scores_the_window_the_runner_runs():
    """slimrt.evaluate's decoder logits apply the pattern (a dense HF forward would hide it), padding-safe."""
    from quality_helpers import TEXTS, clone, word_tokenizer
    from quality_helpers import tiny_llama as q_llama

    tok, ref = word_tokenizer(), q_llama()
    texts = TEXTS[:3] + ["short text"]
    wide = slimrt.compress(clone(ref), recipe(4096), progress=False)
    assert slimrt.evaluate(wide, ref, texts, tokenizer=tok, progress=False)["kl"] == pytest.approx(0.0, abs=1e-9)
    narrow = slimrt.compress(clone(ref), recipe(3, 1), progress=False)
    r1 = slimrt.evaluate(narrow, ref, texts, tokenizer=tok, batch_size=1, progress=False)
    r4 = slimrt.evaluate(narrow, ref, texts, tokenizer=tok, batch_size=4, progress=False)
    assert r1["kl"] > 1e-4 and math.isfinite(r1["kl"])
    for key in ("kl", "top1", "ppl_compressed"):
        assert r1[key] == pytest.approx(r4[key], rel=1e-4), key


def test_distill_trains_under_the_window():
    from quality_helpers import TEXTS, clone, word_tokenizer
    from quality_helpers import tiny_llama as q_llama
    from slimrt.distill import _forward
    from slimrt.evaluate import _tokenize

    tok, teacher = word_tokenizer(), q_llama()
    student = slimrt.compress(clone(teacher), recipe(3, 1, 4, "w8"), progress=False)
    ids, mask = _tokenize(tok, TEXTS[:2] + ["short text"], 64)
    _, logits = _forward(student, ids, mask)
    with torch.no_grad():
        ref = student(input_ids=ids[:1], attention_mask=token_rule(ids.shape[1], ids.shape[1], True, 3, 1)[None, None])
        dense = student(input_ids=ids[:1]).logits
    n = int(mask[0].sum())
    torch.testing.assert_close(logits[0, :n], ref.logits[0, :n], atol=1e-4, rtol=1e-4)
    assert (logits[0, :n] - dense[0, :n]).abs().max() > 1e-3
    rec = slimrt.distill(student, teacher, TEXTS, steps=6, lr=3e-3, seed=0, tokenizer=tok, batch_size=4,
                         progress=False)
    assert math.isfinite(rec["loss_after"]) and rec["loss_after"] < rec["loss_before"], rec


def test_concurrent_generate_matches_serial():
    import threading

    rt = Runner(sparse("gpt2", 4, 1, 4))
    prompts = [PROMPT, PROMPT[::-1], PROMPT[2:9]]
    want = [rt.generate_ids([p], 20, eos=False) for p in prompts]
    got: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, rt.generate_ids([prompts[i]], 20, eos=False)))
               for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == want
