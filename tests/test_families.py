"""Every family, on its path: compress, save, load, run, and compare with the uncompressed HF forward.

Tiny random configs (no downloads). Encoders: embeddings of the loaded checkpoint against the dense
model's mean-pooled last hidden state (cosine floor). Decoders: greedy tokens of the loaded Runner
equal Hugging Face ``generate`` of the same compressed model (slimrt modules inside its own forward),
and the Runner's next-token logits stay close to the dense model's (cosine floor).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from torch import nn

import slimrt
from slimrt.models._common import Batch
from slimrt.models.bert import pool
from slimrt.runner import Runner

V, C, L, H, FF, P = 99, 32, 2, 4, 37, 64  # vocab, width, layers, heads, FFN width, positions
COS_FLOOR = 0.99  # w8 on random 32-wide models: measured 0.9995+ for every family


def _enc(cfg_cls, model_cls, **kw):
    return model_cls(cfg_cls(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H,
                             intermediate_size=FF, max_position_embeddings=P, **kw))


def _dec(cfg_cls, model_cls, **kw):
    return model_cls(cfg_cls(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H,
                             intermediate_size=FF, max_position_embeddings=P, **kw))


BUILDERS = {
    # encoders on the lean path
    "bert": lambda: _enc(tf.BertConfig, tf.BertModel),
    "roberta": lambda: _enc(tf.RobertaConfig, tf.RobertaModel),
    "xlm-roberta": lambda: _enc(tf.XLMRobertaConfig, tf.XLMRobertaModel),
    "mpnet": lambda: _enc(tf.MPNetConfig, tf.MPNetModel),
    "distilbert": lambda: tf.DistilBertModel(tf.DistilBertConfig(vocab_size=V, dim=C, n_layers=L, n_heads=H,
                                                                 hidden_dim=FF, max_position_embeddings=P)),
    # encoders on the generic path
    "t5-encoder": lambda: tf.T5EncoderModel(tf.T5Config(vocab_size=V, d_model=C, d_kv=C // H, d_ff=FF,
                                                        num_layers=L, num_heads=H)),
    # decoders on the generic path
    "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(vocab_size=V, hidden_size=C, num_hidden_layers=L, ffn_dim=FF,
                                                  num_attention_heads=H, max_position_embeddings=P,
                                                  word_embed_proj_dim=C)),
    "qwen2": lambda: _dec(tf.Qwen2Config, tf.Qwen2ForCausalLM, num_key_value_heads=2),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=C, n_layer=L, n_head=H, n_positions=P)),
}
# family -> (Runner path after load, whether the generic path is forced for a lean-covered family)
CASES = {"bert": ("lean", False), "roberta": ("lean", False), "xlm-roberta": ("lean", False),
         "mpnet": ("lean", False), "distilbert": ("lean", False),
         "distilbert-generic": ("generic", True), "t5-encoder": ("generic", False),
         "opt": ("generic", False), "qwen2-generic": ("generic", True), "gpt2-generic": ("generic", True)}


def _build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[family.removesuffix("-generic")]().eval()


def _ids(b: int, t: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids that avoid the special ids 0-2 (RoBERTa's padding id is 1) and their mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (b, t), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, b):
        mask[row, t - 2 * row:] = 0
    return ids, mask


def _load(model: nn.Module, tmp_path, generic: bool) -> Runner:
    slimrt.compress(model, "w8", progress=False)
    slimrt.save(model, tmp_path / "ckpt")
    return slimrt.load(tmp_path / "ckpt", generic=generic)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "distilbert-generic",
                                    "t5-encoder"])
def test_encoder_round_trip(family, tmp_path):
    path, generic = CASES[family]
    dense = _build(family)
    rt = _load(copy.deepcopy(dense), tmp_path, generic)
    assert (rt.kind, rt.path) == ("encoder", path), (rt.kind, rt.path, rt.path_reason)
    ids, mask = _ids(3, 12)
    got = rt.embed_ids(ids, mask, normalize=False)
    with torch.inference_mode():
        want = pool(dense(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")
    cos = _cos(got, want)
    assert float(cos.min()) >= COS_FLOOR, f"{family}: embedding cosine to dense {cos.tolist()}"


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "mpnet", "distilbert"])
def test_lean_encoder_equals_hf_dense(family):
    """The dense model: the lean forward's hidden states are the HF forward's (padding rows included)."""
    model = _build(family)
    rt = Runner(model)
    assert rt.path == "lean", rt.path_reason
    ids, mask = _ids(3, 12)
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    got = rt.lean.forward(ids, mask)
    err = (got - want).abs().max().item()
    assert err < 1e-5, f"{family}: max |lean - HF| = {err}"


def _hf_greedy(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["opt", "qwen2-generic", "gpt2-generic"])
def test_decoder_round_trip(family, tmp_path):
    path, generic = CASES[family]
    dense = _build(family)
    compressed = copy.deepcopy(dense)
    rt = _load(compressed, tmp_path, generic)
    assert (rt.kind, rt.path) == ("decoder", path), (rt.kind, rt.path, rt.path_reason)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # a left-padded batch: each row as if alone
    got = rt.generate_ids(prompts, 8, eos=False)
    want = [_hf_greedy(compressed, p, 8) for p in prompts]
    assert got == want, f"{family}: Runner {got} vs HF generate of the compressed model {want}"
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        dense_logits = dense(input_ids=ids).logits[:, -1]
        batch = rt.lean.prepare(Batch.left_padded([ids.shape[1]], ids.shape[1], torch.device("cpu")))
        ours = rt.lean.forward(ids, batch, rt.lean.new_cache(1, ids.shape[1]), 0, None, True)
    cos = _cos(ours, dense_logits)
    assert float(cos.min()) >= COS_FLOOR, f"{family}: next-token logits cosine to dense {cos.tolist()}"


def test_sequential_checkpoint_loads_as_a_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 16)
    slimrt.compress(model, "w8", progress=False)
    want = model(x)
    slimrt.save(model, tmp_path / "seq")
    rt = slimrt.load(tmp_path / "seq")
    assert (rt.kind, rt.path) == ("module", "generic") and "not a Hugging Face model" in rt.path_reason
    torch.testing.assert_close(rt.model(x), want)
    with pytest.raises(ValueError, match="embed needs an encoder; this is a Sequential module"):
        rt.embed("text")
    with pytest.raises(ValueError, match="generate needs a decoder"):
        rt.generate_ids([[1, 2]], 2)


def test_seq2seq_generates_through_its_own_generate():
    torch.manual_seed(0)
    model = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=V, d_model=C, d_kv=C // H, d_ff=FF, num_layers=L,
                                                      num_heads=H, decoder_start_token_id=0)).eval()
    slimrt.compress(model, "w8", progress=False)
    rt = Runner(model)
    assert (rt.kind, rt.path) == ("seq2seq", "generic")
    prompt = [5, 6, 7, 8]
    got = rt.generate_ids([prompt], 5, eos=False)
    want = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False)[0, 1:].tolist()
    assert got == [want]


def test_thin_load_falls_back_to_the_hf_skeleton_for_the_generic_path(tmp_path):
    """A thin-eligible Llama whose rope the lean forward refuses reloads with transformers' skeleton."""
    torch.manual_seed(0)
    model = _dec(tf.LlamaConfig, tf.LlamaForCausalLM, num_key_value_heads=2,
                 rope_scaling={"rope_type": "dynamic", "factor": 2.0}).eval()
    slimrt.save(model, tmp_path / "llama")
    rt = slimrt.load(tmp_path / "llama")
    assert rt.path == "generic" and "dynamic" in rt.path_reason, rt.path_reason
    assert rt.generate_ids([[5, 6, 7]], 4, eos=False) == [_hf_greedy(model, [5, 6, 7], 4)]


def _gemma(cfg_cls, model_cls, **kw):
    return _dec(cfg_cls, model_cls, head_dim=8, num_key_value_heads=2, **kw)


DECODERS = {
    "gemma": lambda: _gemma(tf.GemmaConfig, tf.GemmaForCausalLM),
    # sliding_window 6 < the 9 + 8 tokens generated: the per-layer window masks are exercised
    "gemma2": lambda: _gemma(tf.Gemma2Config, tf.Gemma2ForCausalLM, sliding_window=6, query_pre_attn_scalar=12),
    "gemma3": lambda: _gemma(tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, sliding_window=6, query_pre_attn_scalar=12,
                             layer_types=["sliding_attention", "full_attention"]),
    "phi3": lambda: _dec(tf.Phi3Config, tf.Phi3ForCausalLM, num_key_value_heads=2, pad_token_id=0),
    "phi3-partial": lambda: _dec(tf.Phi3Config, tf.Phi3ForCausalLM, pad_token_id=0, partial_rotary_factor=0.5),
}
BUILDERS.update(DECODERS)
CASES.update({name: ("lean", False) for name in DECODERS})


@pytest.mark.parametrize("family", list(DECODERS))
def test_lean_decoder_families(family, tmp_path):
    test_decoder_round_trip(family, tmp_path)


@pytest.mark.parametrize("family", list(DECODERS))
def test_lean_decoder_equals_hf_dense(family):
    """The dense model: the lean forward's greedy tokens equal HF generate's, alone and in a padded batch."""
    model = _build(family)
    rt = Runner(model)
    assert rt.path == "lean" and rt.kind == "decoder", rt.path_reason
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]
    got = rt.generate_ids(prompts, 8, eos=False)
    want = [_hf_greedy(model, p, 8) for p in prompts]
    assert got == want, f"{family}: lean {got} vs HF {want}"


# ----- every entry point on the generic path: embed, generate, stream, chat, evaluate, the CLI -----------

def test_every_entry_point_on_the_generic_path(tmp_path, capsys):
    import json

    from slimrt import cli
    from test_chat import MESSAGES, chat_tokenizer

    tok = chat_tokenizer()
    texts = ["the runner streams text", "as it is decoded", "system user assistant"]
    torch.manual_seed(0)
    dense = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=300, hidden_size=C, num_hidden_layers=L, ffn_dim=FF,
                                           num_attention_heads=H, max_position_embeddings=P, word_embed_proj_dim=C,
                                           pad_token_id=1, bos_token_id=0, eos_token_id=tok.eos_token_id)).eval()
    dense.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    model = copy.deepcopy(dense)
    slimrt.compress(model, "w8", progress=False)
    slimrt.save(model, tmp_path / "ckpt", tokenizer=tok)
    rt = slimrt.load(tmp_path / "ckpt")
    assert rt.path == "generic" and "path=generic" in repr(rt)
    text = rt.generate("the runner", max_new_tokens=6, eos=False)
    assert isinstance(text, str) and "".join(rt.stream("the runner", max_new_tokens=6, eos=False)) == text
    assert isinstance(rt.chat(MESSAGES, max_new_tokens=6), str)
    r = slimrt.evaluate(rt, dense, data=texts, tokenizer=tok, progress=False)
    assert r["top1"] >= 0.9 and r["kl"] < 0.01, r
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--reference", str(tmp_path / "src"), "--json",
                     "--no-progress", "--data", _lines(tmp_path, texts)]) == 0
    assert "kl" in json.loads(capsys.readouterr().out)
    assert cli.main(["generate", str(tmp_path / "ckpt"), "--prompt", "the runner", "--max-new-tokens", "3"]) == 0


def test_embed_and_eval_on_a_generic_encoder(tmp_path, capsys):
    import json

    from slimrt import cli
    from test_chat import chat_tokenizer

    tok = chat_tokenizer()
    texts = ["the runner streams text", "as it is decoded", "system user assistant"]
    torch.manual_seed(0)
    dense = tf.T5EncoderModel(tf.T5Config(vocab_size=300, d_model=C, d_kv=C // H, d_ff=FF, num_layers=L,
                                          num_heads=H)).eval()
    dense.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    model = copy.deepcopy(dense)
    slimrt.compress(model, "w8", progress=False)
    slimrt.save(model, tmp_path / "ckpt", tokenizer=tok)
    rt = slimrt.load(tmp_path / "ckpt")
    assert (rt.kind, rt.path) == ("encoder", "generic")
    emb = rt.embed(texts)
    assert emb.shape == (3, C) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    r = slimrt.evaluate(rt, dense, data=texts, tokenizer=tok, progress=False)
    assert r["cos_min"] >= COS_FLOOR, r
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--reference", str(tmp_path / "src"), "--json",
                     "--no-progress", "--data", _lines(tmp_path, texts)]) == 0
    assert json.loads(capsys.readouterr().out)["cos_min"] >= COS_FLOOR
    assert cli.main(["embed", str(tmp_path / "ckpt"), "--text", "the runner"]) == 0


def _lines(tmp_path, texts: list[str]) -> str:
    path = tmp_path / "data.txt"
    path.write_text("\n".join(texts) + "\n")
    return str(path)


def test_path_says_which_forward_runs_and_why():
    torch.manual_seed(0)
    model = _dec(tf.LlamaConfig, tf.LlamaForCausalLM, num_key_value_heads=2).eval()
    slimrt.compress(model, "w8", progress=False)
    native = Runner(model)
    assert native.path == "native" and native.path_reason.startswith("the native decode step"), native.path_reason
    lean = Runner(model, native=False)
    assert lean.path == "lean" and lean.path_reason == "slimrt's lean llama forward; not native: disabled (native=False)"
    gemma = Runner(_build("gemma"))
    assert gemma.path == "lean" and "the Llama and GPT-2 families, not gemma" in gemma.path_reason, gemma.path_reason
    generic = Runner(model, generic=True)
    assert generic.path == "generic" and generic.native is None and "generic=True" in generic.path_reason


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_custom_class_checkpoint_loads_with_its_skeleton(tmp_path):
    """A user's own class cannot be rebuilt from JSON (no pickle, no imports): slimrt.load says to pass
    model=<an instance>, and with it runs the module."""
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(3, 16)
    slimrt.compress(model, "w8", progress=False)
    want = model(x)
    slimrt.save(model, tmp_path / "net")
    with pytest.raises(slimrt.CheckpointError, match="pass model=<an instance of the original class>"):
        slimrt.load(tmp_path / "net")
    rt = slimrt.load(tmp_path / "net", model=_Net())
    assert (rt.kind, rt.path) == ("module", "generic")
    torch.testing.assert_close(rt.model(x), want)
