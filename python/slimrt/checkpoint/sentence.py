"""sentence-transformers in and out: a SentenceTransformer saves as an ordinary Hugging Face checkpoint.

``slimrt.save(st_model, d)`` stores the model under its Transformer module (``st[0].auto_model``, a
transformers model, so the checkpoint is of kind "hf" and needs no user class to load), its tokenizer,
and what the other modules do as embedding settings in the compression metadata: ``pooling``
(Pooling), ``normalize`` (a Normalize module) and ``max_seq_length``; ``slimrt.load(d)`` then embeds
as ``st_model.encode`` does. ``to_sentence_transformer(d)`` hands the checkpoint back as a
SentenceTransformer (Transformer + Pooling (+ Normalize)) whose Transformer runs the loaded model,
slimrt modules inside. Only Transformer, Pooling and Normalize modules are understood; a pipeline
with others (Dense, ...) is refused at save rather than stored without them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any
from unittest import mock

from torch import nn

# sentence-transformers' pooling names -> slimrt.runner.POOLING_MODES, and back
_FROM_ST = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}
_TO_ST = {v: k for k, v in _FROM_ST.items()}


def is_sentence_transformer(model: Any) -> bool:
    """Whether ``model`` is a sentence_transformers SentenceTransformer (without importing the package)."""
    return any(c.__name__ == "SentenceTransformer" and c.__module__.startswith("sentence_transformers")
               for c in type(model).__mro__)


def _pooling_mode(module: nn.Module) -> str:
    cfg = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
    mode = cfg.get("pooling_mode")  # sentence-transformers >= 6: one name
    if isinstance(mode, (list, tuple)) and len(mode) == 1:
        mode = mode[0]
    if mode is None:  # before 6: one flag per mode
        on = [m for m in _FROM_ST if cfg.get(f"pooling_mode_{m}" if m.endswith("tokens") else
                                             f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")]
        mode = on[0] if len(on) == 1 else None
    if mode not in _FROM_ST:
        raise ValueError(f"save: the SentenceTransformer's Pooling mode {mode!r} is not one slimrt runs; supported: "
                         f"{', '.join(_FROM_ST)}")
    return _FROM_ST[mode]


def unwrap(model: nn.Module) -> tuple[nn.Module, dict[str, Any], Any, str]:
    """(the transformers model, embedding settings, tokenizer, the model's name prefix in ``model``)."""
    children = list(model.named_children())
    names = [type(m).__name__ for _, m in children]
    if not children or names[0] != "Transformer" or any(n not in ("Pooling", "Normalize") for n in names[1:]):
        raise ValueError(f"save: a SentenceTransformer of {' -> '.join(names) or 'no modules'} cannot be stored; "
                         "slimrt runs Transformer -> Pooling (-> Normalize)")
    transformer_name, transformer = children[0]
    inner = transformer.auto_model
    settings: dict[str, Any] = {"pooling": "mean", "normalize": "Normalize" in names}
    for _, m in children[1:]:
        if type(m).__name__ == "Pooling":
            settings["pooling"] = _pooling_mode(m)
    max_len = getattr(model, "max_seq_length", None)
    if isinstance(max_len, int) and max_len > 0:
        settings["max_seq_length"] = max_len
    tokenizer = getattr(transformer, "tokenizer", None)
    prefix = next(f"{transformer_name}.{n}." for n, m in transformer.named_children() if m is inner) \
        if any(m is inner for m in transformer.children()) else f"{transformer_name}."
    return inner, settings, tokenizer, prefix


def _strip(meta: dict[str, Any], prefix: str) -> dict[str, Any]:
    """slimrt_meta of the SentenceTransformer with layer names relative to the transformers model."""
    out = dict(meta)
    out["layers"] = [{**r, "name": r["name"].removeprefix(prefix)} for r in meta.get("layers", [])]
    out["fallbacks"] = {k.removeprefix(prefix): v for k, v in meta.get("fallbacks", {}).items()}
    return out


def prepare(model: nn.Module) -> tuple[nn.Module, dict[str, Any], Any]:
    """(the model to save, its slimrt_meta with the embedding settings, the tokenizer)."""
    inner, settings, tokenizer, prefix = unwrap(model)
    meta = getattr(model, "slimrt_meta", None)
    meta = _strip(meta, prefix) if isinstance(meta, dict) else {}
    return inner, {**meta, **settings, "sentence_transformers": True}, tokenizer


def to_sentence_transformer(path: str | os.PathLike) -> Any:
    """The checkpoint at ``path`` as a ``sentence_transformers.SentenceTransformer`` (Transformer with the
    checkpoint's model, slimrt modules inside; Pooling as stored; Normalize if stored)."""
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Normalize, Pooling, Transformer
    except ImportError:
        raise ImportError("to_sentence_transformer needs sentence-transformers: pip install sentence-transformers") \
            from None
    from slimrt.checkpoint.loader import load_model

    loaded = load_model(path)
    model, meta = loaded.model, loaded.model.slimrt_meta or {}
    if loaded.tokenizer is None or getattr(model, "config", None) is None:
        raise ValueError(f"to_sentence_transformer: {os.fspath(path)} needs a Hugging Face model saved with its "
                         "tokenizer")
    if not hasattr(Transformer, "_load_model"):
        raise ImportError("to_sentence_transformer: this sentence-transformers version builds its Transformer "
                          "module differently; sentence-transformers 5 or 6 is needed")
    max_len = meta.get("max_seq_length")
    with tempfile.TemporaryDirectory(prefix="slimrt-st-") as tmp:
        # The Transformer module reads its config and tokenizer from a directory; its weights are the
        # loaded model itself (slimrt modules included), handed over instead of being read from disk.
        model.config.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        with mock.patch.object(Transformer, "_load_model", lambda self, *args, **kwargs: model):
            transformer = Transformer(tmp, max_seq_length=max_len if isinstance(max_len, int) else None)
    pooling = Pooling(model.config.hidden_size, pooling_mode=_TO_ST[meta.get("pooling", "mean")])
    modules = [transformer, pooling] + ([Normalize()] if meta.get("normalize") else [])
    st = SentenceTransformer(modules=modules, device=str(next(model.parameters()).device))
    st.slimrt_meta = meta
    return st.eval()
