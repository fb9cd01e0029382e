"""A real chat model end to end: SmolLM2-135M-Instruct from its GGUF file, compressed with the default
`w8` recipe by the CLI, loaded, asked a question through its chat template. Slow (about a minute)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import slimrt
from slimrt.chat import prompt_ids

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def w8_checkpoint(smollm2_checkpoint):
    return smollm2_checkpoint("w8")


def test_default_w8_answers_through_the_native_step(w8_checkpoint):
    rt = slimrt.load(w8_checkpoint)
    assert rt.native is not None, rt.native_reason  # the default recipe quantizes the tied LM head
    reply = rt.chat(QUESTION, max_new_tokens=24)
    assert "Paris" in reply, reply
    # The native step's greedy tokens equal the eager step's on the same prompt.
    ids = prompt_ids(rt.tokenizer, QUESTION)
    eager = slimrt.Runner(rt.model, rt.tokenizer, native=False)
    assert rt.generate_ids([ids], 24) == eager.generate_ids([ids], 24)


def test_cli_chat_and_generate_chat(w8_checkpoint):
    r = subprocess.run([sys.executable, "-m", "slimrt.cli", "chat", str(w8_checkpoint)], capture_output=True,
                       text=True, timeout=600, input="What is the capital of France?\n/reset\n/exit\n")
    assert r.returncode == 0 and "Paris" in r.stdout, r.stdout + r.stderr
    assert "conversation cleared" in r.stderr
    r = subprocess.run([sys.executable, "-m", "slimrt.cli", "generate", str(w8_checkpoint), "--chat", "--prompt",
                        "What is the capital of France?"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Paris" in r.stdout, r.stdout + r.stderr


def test_thin_tokenizer_matches_transformers_on_smollm2(w8_checkpoint):
    from slimrt.checkpoint import load_model
    from slimrt.data import pydoc_paragraphs

    thin, full = load_model(w8_checkpoint, thin=True).tokenizer, load_model(w8_checkpoint).tokenizer
    assert type(thin).__module__ == "slimrt.tokenizer" and type(full).__module__.startswith("transformers")
    texts = pydoc_paragraphs("eval")[:50] + ["héllo wörld 你好 🙂"]
    assert thin(texts)["input_ids"] == full(texts)["input_ids"]
    chat = QUESTION + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Germany?"}]
    for gen in (True, False):
        assert thin.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) == \
            full.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
