"""Chat turns: messages -> prompt token ids through the tokenizer's chat template, and the ids
that end an assistant turn.

A chat model is trained on one template (ChatML for SmolLM2 and Qwen, Llama 3's header tokens, ...)
and stops a reply with its own end-of-turn token; a raw prompt or a missing stop token gives an
empty or run-on reply. The template ships with the tokenizer (``tokenizer.chat_template``); this
module only renders it (it is data from the checkpoint, rendered by transformers' sandboxed Jinja
environment) and never guesses a template for a tokenizer that has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant", "tool")

# Special tokens that end a turn in the common chat formats; those in the vocabulary stop a reply.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                      "<|end_of_text|>")


class ChatTemplateError(ValueError):
    """The tokenizer cannot render a chat (no chat template)."""


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Validates chat messages [{"role": ..., "content": str}, ...] and returns plain dict copies."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("chat: messages must be a list of {'role': ..., 'content': ...} dicts, "
                        f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("chat: messages is empty; pass at least one {'role': 'user', 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"chat: message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"chat: message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TypeError(f"chat: message {i} content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of the conversation rendered with the tokenizer's chat template, ending with the
    assistant's turn header (add_generation_prompt), ready for generation."""
    messages = check_messages(messages)
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer: pass Runner(model, tokenizer)")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(f"chat: the tokenizer ({name}) has no chat template, so there is no way to know "
                                "how this model expects a conversation; use generate with a plain prompt, or "
                                "set tokenizer.chat_template to the template the model was trained with")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The rendered template already holds the special tokens it needs (BOS included where it uses one).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> set[int]:
    """The model's end-of-sequence ids plus every end-of-turn special token its tokenizer knows."""
    ids = set(eos_ids)
    if tokenizer is not None:
        if getattr(tokenizer, "eos_token_id", None) is not None:
            ids.add(int(tokenizer.eos_token_id))
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        for tok in END_OF_TURN_TOKENS:
            if tok in vocab:
                ids.add(int(vocab[tok]))
    return {i for i in ids if 0 <= i < vocab_size}
