"""The generic path: any Hugging Face model the lean forwards do not cover, through its own forward.

The slimrt modules swapped into the model run inside that forward, so every compressed layer still
runs slimrt's kernels; what the generic path gives up is the lean forwards' own attention, fused
projections and the native decode step. Same interface as the lean forwards, so the Runner's loops
do not change:

- ``GenericEncoder.forward(input_ids, attention_mask)`` -> last hidden state (B, T, C) of the base
  model (``model.base_model``: the encoder under any task head); the Runner pools it as configured.
- ``GenericDecoder``: ``prepare(batch)`` keeps the Runner's Batch (left padding, positions), and
  ``forward(ids, batch, cache, start, mask, causal)`` calls the model with the attention mask and
  position ids of slots [0, start + T) and the model's own KV cache (``cache``; ``past_key_values``
  before transformers 5), which ``GenericCache`` holds between steps; the last position's logits
  come back.
- ``GenericSeq2Seq``: encoder-decoder models (T5, BART) generate through the model's ``generate``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from slimrt.models._common import Batch

# Config keys that give a model's context length, in the order they are trusted.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
DEFAULT_CONTEXT = 512  # models with relative positions only (T5) name no limit


def context_length(config: Any, default: int = DEFAULT_CONTEXT) -> int:
    """The longest sequence the model's config allows (position embeddings), else ``default``."""
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def kind_of(model: nn.Module) -> str:
    """"decoder" (a causal LM head: generates), "seq2seq" (encoder-decoder) or "encoder" (anything else
    with a config: its hidden states are embedded)."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    if getattr(config, "is_encoder_decoder", False):  # without an LM head (T5Model): its encoder embeds
        return "seq2seq" if callable(can_generate) and can_generate() else "encoder"
    get_head = getattr(model, "get_output_embeddings", None)
    try:
        has_head = callable(get_head) and get_head() is not None
    except (AttributeError, NotImplementedError):
        has_head = False
    if callable(can_generate) and can_generate() and has_head:
        return "decoder"
    return "encoder"


def _first_tensor(model: nn.Module) -> Tensor | None:
    return next(iter(list(model.parameters()) + list(model.buffers())), None)


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Generic:
    family = "generic"

    def __init__(self, model: nn.Module, reason: str) -> None:
        self.model = model
        self.config = model.config
        self.reason = reason
        t = _first_tensor(model)
        self.device = t.device if t is not None else torch.device("cpu")
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.max_positions = context_length(self.config)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        n_out = getattr(head, "out_features", None) or getattr(head, "num_embeddings", None)
        self.vocab_size = int(n_out or getattr(self.config, "vocab_size", 0) or 0)


class GenericEncoder(_Generic):
    """Encoder through the model's own forward: ``forward(input_ids, attention_mask)`` -> (B, T, C)."""

    kind = "encoder"

    def __init__(self, model: nn.Module, reason: str) -> None:
        super().__init__(model, reason)
        # The encoder under a task head (BertForMaskedLM -> BertModel; a base model is its own), or
        # the encoder half of an encoder-decoder model (T5Model).
        get_encoder = getattr(model, "get_encoder", None)
        if getattr(self.config, "is_encoder_decoder", False) and callable(get_encoder):
            self.base = get_encoder()
        else:
            self.base = getattr(model, "base_model", model) or model

    @torch.inference_mode()
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.base(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out[0]


class GenericCache:
    """The model's own KV cache between the Runner's calls (created by the model on the first one)."""

    def __init__(self) -> None:
        self.past: Any = None

    def nbytes(self) -> int:
        return 0


class GenericDecoder(_Generic):
    """Decoder through the model's own forward and KV cache, in slimrt's prefill/decode loop."""

    kind = "decoder"

    def __init__(self, model: nn.Module, reason: str) -> None:
        super().__init__(model, reason)
        self.takes_positions = _accepts(model.forward, "position_ids")
        self.takes_keep = _accepts(model.forward, "logits_to_keep")
        # transformers 5 renamed past_key_values to cache (forward argument and output field)
        self.cache_arg = "past_key_values" if _accepts(model.forward, "past_key_values") else "cache"

    def prepare(self, batch: Batch) -> Batch:
        return batch

    def new_cache(self, batch: int, max_len: int) -> GenericCache:
        return GenericCache()

    @torch.inference_mode()
    def forward(self, ids: Tensor, batch: Batch, cache: GenericCache, start: int, mask: Tensor | None,
                causal: bool) -> Tensor:
        """ids (B, T) at slots [start, start+T) -> logits of the last position (B, V) float32.

        The 2-D attention mask covers every slot so far (left padding is 0), and position ids are the
        Runner's (a padded row sees the positions it would see alone), so batches equal single runs.
        """
        end = start + ids.shape[1]
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": batch.valid[:, :end].long(),
                                  self.cache_arg: cache.past, "use_cache": True}
        if self.takes_positions:
            kwargs["position_ids"] = batch.positions[:, start:end]
        if self.takes_keep:
            kwargs["logits_to_keep"] = 1  # only the last position is sampled
        out = self.model(**kwargs)
        cache.past = getattr(out, self.cache_arg, None)
        return out.logits[:, -1].float()


class GenericSeq2Seq(_Generic):
    """Encoder-decoder models: ``generate`` runs the model's own generate (slimrt modules inside)."""

    kind = "seq2seq"

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None) -> Tensor:
        """input_ids, attention_mask (B, T) -> new token ids (B, N), the decoder start token removed."""
        sampling = temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": max_new_tokens}
        if sampling:
            kwargs.update(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out[:, 1:]


def build(model: nn.Module, reason: str) -> "_Generic | GenericModule":
    """The generic forward for a model, by what it is (see ``kind_of``; no config: a plain module)."""
    if getattr(model, "config", None) is None:
        return GenericModule(model, reason)
    kind = kind_of(model)
    cls = {"decoder": GenericDecoder, "seq2seq": GenericSeq2Seq, "encoder": GenericEncoder}[kind]
    return cls(model, reason)


class GenericModule:
    """A model that is not a Hugging Face one (an nn.Sequential, a user's class): nothing to embed or
    generate with; the Runner holds it and ``rt.model(...)`` calls it."""

    kind = "module"
    family = "module"
    max_positions = 0
    vocab_size = 0

    def __init__(self, model: nn.Module, reason: str) -> None:
        self.model = model
        self.config = getattr(model, "config", None)
        self.reason = reason
        t = _first_tensor(model)
        self.device = t.device if t is not None else torch.device("cpu")
