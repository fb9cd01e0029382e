"""SmolLM2-135M-Instruct compressed with the `w4` preset (int4 body, int8 head) from its GGUF file:
it answers through the native step, whose greedy tokens equal the eager step's, and its perplexity
on slimrt's evaluation text stays within the bound of the issue's llama.cpp Q4_0 comparison.
Slow (a minute or two)."""

from __future__ import annotations

import math

import pytest
import torch

import slimrt
from slimrt.chat import prompt_ids
from slimrt.nn import Int8Linear, W4Linear
from test_gguf import smollm2_path

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def w4_checkpoint(smollm2_checkpoint):
    return smollm2_checkpoint("w4")


def test_w4_answers_through_the_native_step(w4_checkpoint):
    rt = slimrt.load(w4_checkpoint)
    assert rt.native is not None, rt.native_reason
    mods = [m for m in rt.model.modules() if isinstance(m, (W4Linear, Int8Linear))]
    assert sum(isinstance(m, W4Linear) for m in mods) == 30 * 7 and sum(isinstance(m, Int8Linear) for m in mods) == 1
    reply = rt.chat(QUESTION, max_new_tokens=24)
    assert "Paris" in reply, reply
    ids = prompt_ids(rt.tokenizer, QUESTION)
    eager = slimrt.Runner(rt.model, rt.tokenizer, native=False)
    assert rt.generate_ids([ids], 24) == eager.generate_ids([ids], 24)


def test_w4_perplexity_is_within_q4_0s_loss(w4_checkpoint):
    """The issue's measurement: llama.cpp Q4_0 loses 23-29% perplexity over fp32 on this model (28.7% on
    these 4 windows); w4 must lose no more than 25% (measured +19.6%), against slimrt's own fp32."""
    from slimrt.data import pydoc_paragraphs
    from slimrt.gguf import load_gguf

    model, tok = load_gguf(smollm2_path())
    ids = tok("\n\n".join(pydoc_paragraphs("eval")), add_special_tokens=False)["input_ids"]
    windows = [ids[i * 512:(i + 1) * 512] for i in range(4)]

    def ppl(m) -> float:
        nll = n = 0
        with torch.inference_mode():
            for w in windows:
                lp = torch.log_softmax(m(input_ids=torch.tensor([w])).logits[0].double(), dim=-1)
                pos = torch.arange(255, 511)
                nll += float(-lp[pos, torch.tensor(w)[pos + 1]].sum())
                n += len(pos)
        return math.exp(nll / n)

    from slimrt.checkpoint import load_model

    base, got = ppl(model), ppl(load_model(w4_checkpoint).model)  # the Hugging Face model (slimrt.load's is thin)
    assert got / base - 1 <= 0.25, f"w4 perplexity {got:.3f} vs fp32 {base:.3f}: {100 * (got / base - 1):+.1f}%"
