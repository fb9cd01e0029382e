"""Runner.chat / chat_stream: the tokenizer's chat template in, the reply out, stopped at end of turn."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from slimrt.chat import ChatTemplateError, check_messages, end_of_turn_ids, prompt_ids
from slimrt.runner import Runner
from test_runner import tiny_llama

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the runner streams text"}]


def chat_tokenizer(template: str | None = CHATML) -> PreTrainedTokenizerFast:
    """A 300-token byte-level BPE with ChatML's two special tokens and (optionally) its template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=299, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the runner streams text as it is decoded; system user assistant"] * 4, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    out.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if template is not None:
        out.chat_template = template
    return out


def test_prompt_is_the_rendered_template_without_extra_special_tokens():
    tok = chat_tokenizer()
    ids = prompt_ids(tok, MESSAGES)
    want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nthe runner streams text<|im_end|>\n" \
           "<|im_start|>assistant\n"
    assert tok.decode(ids) == want
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids.count(tok.eos_token_id) == 2


def test_end_of_turn_ids_include_the_template_stop_token():
    tok = chat_tokenizer()
    assert tok.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tok, 300, set())
    assert all(i < 2 for i in end_of_turn_ids(tok, 2, {5})), "ids outside the model's vocabulary are dropped"


@pytest.mark.parametrize("native", [True, False])
def test_chat_stops_at_end_of_turn_and_streams_the_same_text(native):
    model = tiny_llama(vocab_size=300, initializer_range=0.2)  # varied greedy tokens, not one repeated
    tok = chat_tokenizer()
    rt = Runner(model, tok, native=native)
    ids = prompt_ids(tok, MESSAGES)
    greedy = rt.generate_ids([ids], 12, eos=False)[0]
    # Make the 4th greedy token the end of turn (first occurrence): the reply must be the 3 before it.
    stop_at = next(i for i in range(3, 12) if greedy[i] not in greedy[:i])
    tok.eos_token = tok.convert_ids_to_tokens(greedy[stop_at])
    reply = rt.chat(MESSAGES, max_new_tokens=12)
    assert reply == tok.decode(greedy[:stop_at], skip_special_tokens=True)
    assert "".join(rt.chat_stream(MESSAGES, max_new_tokens=12)) == reply
    stats: dict = {}
    rt.chat(MESSAGES, max_new_tokens=12, stats=stats)
    assert stats["new_tokens"] == stop_at + 1 and stats["prompt_tokens"] == len(ids)


def test_chat_keeps_to_the_context():
    rt = Runner(tiny_llama(vocab_size=300, max_position_embeddings=64), chat_tokenizer())
    n = len(prompt_ids(chat_tokenizer(), MESSAGES))
    stats: dict = {}
    rt.chat(MESSAGES, max_new_tokens=1000, stats=stats)  # lowered to what the context has left
    assert stats["new_tokens"] <= 64 - n
    long = [{"role": "user", "content": "the runner streams text " * 40}]
    with pytest.raises(ValueError, match="fills the model's context of 64"):
        rt.chat(long)


def test_chat_errors_are_clear():
    rt = Runner(tiny_llama(vocab_size=300), chat_tokenizer(template=None))
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        rt.chat(MESSAGES)
    rt = Runner(tiny_llama(vocab_size=300), chat_tokenizer())
    with pytest.raises(TypeError, match="list of"):
        rt.chat("hello")
    with pytest.raises(ValueError, match="messages is empty"):
        rt.chat([])
    with pytest.raises(ValueError, match="role 'robot'"):
        rt.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(TypeError, match="content must be a string"):
        check_messages([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="temperature"):
        rt.chat(MESSAGES, temperature=-1)
    with pytest.raises(ValueError, match="chat needs a tokenizer"):
        Runner(tiny_llama(vocab_size=300)).chat(MESSAGES)
