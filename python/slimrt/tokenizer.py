"""A thin tokenizer over a checkpoint's ``tokenizer.json``: what the Runner needs, without transformers.

Importing transformers' tokenizer classes costs more than a second on a small CPU, more than the rest
of loading a small model. Hugging Face's fast tokenizers are the ``tokenizers`` library underneath, so
a checkpoint that holds a ``tokenizer.json`` is tokenized here by that library directly, with the
special tokens and chat template of ``tokenizer_config.json`` / ``chat_template.jinja``. The ids are
the same as transformers' (tests/test_tokenizer.py compares them on real text for BERT, Llama-style
and GPT-2 tokenizers). A checkpoint without ``tokenizer.json`` keeps the transformers path.

The chat template is data from the checkpoint: it is rendered in Jinja's sandboxed environment (as
transformers does), never evaluated as Python.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class Tokenizer:
    """The subset of a transformers tokenizer the Runner, chat and CLI use, over ``tokenizers``."""

    def __init__(self, backend: Any, config: Mapping[str, Any], chat_template: str | None, files: dict[str, bytes],
                 name: str = "") -> None:
        self._tok = backend
        self._lock = threading.Lock()  # truncation is a setting of the shared backend: one call at a time
        self._tok.no_truncation()
        self._tok.no_padding()
        self._files = dict(files)
        self.name_or_path = name
        self.chat_template = chat_template
        self.model_max_length = config.get("model_max_length") if isinstance(config.get("model_max_length"), int) \
            else None
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        for key in SPECIAL_KEYS:
            setattr(self, key, _token_text(config.get(key)))
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        self.additional_special_tokens = [t for t in (_token_text(v) for v in extra) if t]

    def __deepcopy__(self, memo: dict) -> "Tokenizer":
        """A copy with its own backend and its own lock (the server gives its HTTP side a copy so
        that tokenizing a request never waits on the engine's calls; a lock cannot be copied)."""
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, threading.Lock() if key == "_lock" else copy.deepcopy(value, memo))
        return new

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], name: str = "") -> "Tokenizer":
        """From a checkpoint's tokenizer files (name -> bytes); needs ``tokenizer.json``."""
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_str(files["tokenizer.json"].decode("utf-8"))
        config: dict[str, Any] = {}
        if "tokenizer_config.json" in files:
            config = json.loads(files["tokenizer_config.json"].decode("utf-8"))
        if "special_tokens_map.json" in files:
            for key, value in json.loads(files["special_tokens_map.json"].decode("utf-8")).items():
                config.setdefault(key, value)
        template = config.get("chat_template")
        if "chat_template.jinja" in files:
            template = files["chat_template.jinja"].decode("utf-8")
        if not isinstance(template, str):  # a list of named templates: the default one
            named = {t.get("name"): t.get("template") for t in template or [] if isinstance(t, Mapping)}
            template = named.get("default")
        return cls(backend, config, template, dict(files), name)

    # ---- ids ----------------------------------------------------------------------------------
    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        return self._id(tokens) if isinstance(tokens, str) else [self._id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | None | list[str | None]:
        return self._tok.id_to_token(int(ids)) if isinstance(ids, int) else [self._tok.id_to_token(int(i)) for i in ids]

    # ---- encode / decode ----------------------------------------------------------------------
    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, **unused: Any) -> dict[str, Any]:
        """{"input_ids", "attention_mask"}: lists (one text) or lists of lists (several), unpadded."""
        if unused.get("return_tensors") is not None or unused.get("padding"):
            raise ValueError("slimrt.tokenizer.Tokenizer returns unpadded lists; pad with the model's own code")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        with self._lock:
            if truncation and max_length is not None:
                self._tok.enable_truncation(int(max_length))
            try:
                enc = self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)
            finally:
                self._tok.no_truncation()
        ids = [e.ids for e in enc]
        masks = [e.attention_mask for e in enc]
        return {"input_ids": ids[0] if single else ids, "attention_mask": masks[0] if single else masks}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean:  # transformers' clean_up_tokenization: no space before punctuation and contractions
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    # ---- chat ---------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **kwargs: Any) -> str | list[int]:
        """The conversation rendered with the checkpoint's chat template (sandboxed Jinja)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        text = _render(self.chat_template, messages=list(messages), add_generation_prompt=add_generation_prompt,
                       **{k: getattr(self, k) for k in SPECIAL_KEYS}, **kwargs)
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text

    # ---- writing ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str, ...]:
        """Writes the files it was made from (so a loaded checkpoint can be saved again)."""
        os.makedirs(directory, exist_ok=True)
        for name, data in self._files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        return tuple(os.path.join(os.fspath(directory), n) for n in self._files)

    def __repr__(self) -> str:
        return f"slimrt.tokenizer.Tokenizer(vocab={len(self)}, eos={self.eos_token!r}, chat_template={bool(self.chat_template)})"


_ENV = None


def _render(template: str, **context: Any) -> str:
    """Renders a chat template as transformers does: an immutable sandbox, trim_blocks and lstrip_blocks,
    the ``raise_exception`` and ``strftime_now`` globals and a ``tojson`` that keeps non-ASCII text."""
    global _ENV
    if _ENV is None:
        from datetime import datetime

        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
                   sort_keys: bool = False) -> str:
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _ENV = env
    return _ENV.from_string(template).render(**context)
