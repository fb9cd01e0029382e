"""Activation statistics over a calibration iterable, collected with forward pre-hooks.

A calibration iterable yields batches of one of these kinds:
  - a token id tensor (B, T) or (T,): called as ``model(batch)`` (input_ids is the first argument
    of every HF model; a plain nn.Module gets its input tensor the same way);
  - a dict of tensors (or a tokenizer's BatchEncoding), e.g. {"input_ids": ..., "attention_mask": ...}: called as ``model(**batch)``;
  - a string or a list of strings: tokenized with ``tokenizer`` (required) and called as a dict.
Padding tokens are seen by the hooks like any other token: their activations are real values the
layers produce, and a max over them only makes the statistics slightly more conservative.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# Strings are cut to this many tokens: calibration needs typical activations, not long contexts.
MAX_CALIBRATION_TOKENS = 512


def _batch_inputs(batch: Any, tokenizer: Any, device: torch.device) -> list[tuple[tuple, dict]]:
    """One batch -> [(args, kwargs)] model calls (several when strings cannot be padded together)."""
    if isinstance(batch, str) or (isinstance(batch, Sequence) and not isinstance(batch, Tensor) and batch
                                  and all(isinstance(s, str) for s in batch)):
        if tokenizer is None:
            raise ValueError("compress: calibration yields strings, so a tokenizer is required; pass "
                             "tokenizer=AutoTokenizer.from_pretrained(...) or token id tensors")
        texts = [batch] if isinstance(batch, str) else list(batch)
        kw = dict(return_tensors="pt", truncation=True, max_length=MAX_CALIBRATION_TOKENS)
        if len(texts) > 1 and getattr(tokenizer, "pad_token", None) is None:
            # GPT-2-style tokenizers have no pad token: run the texts one at a time instead.
            return [((), {k: v.to(device) for k, v in tokenizer(t, **kw).items()}) for t in texts]
        enc = tokenizer(texts, padding=len(texts) > 1, **kw)
        return [((), {k: v.to(device) for k, v in enc.items()})]
    if isinstance(batch, Tensor):
        return [((batch.to(device),), {})]
    if isinstance(batch, Mapping):  # a dict or a tokenizer's BatchEncoding
        return [((), {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})]
    raise ValueError(f"compress: a calibration batch must be a token id tensor, a dict of tensors, a string or "
                     f"a list of strings; got {type(batch).__name__}")


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def collect_input_amax(model: nn.Module, modules: list[nn.Module], names: list[str], calibration: Iterable[Any],
                       tokenizer: Any = None, progress: bool = True) -> dict[str, Tensor]:
    """Runs the model over the calibration batches; returns {name: max |x| per input channel (K,)}
    for the input x of each listed module. Raises ValueError if a statistic is NaN/Inf (naming the
    module) or if the iterable is empty. Modules no batch reached are absent from the result."""
    from tqdm import tqdm

    amax: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            # x (..., K) -> per-channel max over every token, in fp32; NaN propagates through amax.
            a = x.detach().reshape(-1, x.shape[-1]).float().abs().amax(dim=0)
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for m, n in zip(modules, names)]
    was_training = model.training
    device = _device(model)
    n_batches = 0
    try:
        model.eval()  # dropout off: statistics of the model as it will run
        total = len(calibration) if hasattr(calibration, "__len__") else None
        with torch.no_grad():
            for batch in tqdm(calibration, total=total, desc="slimrt calibration", unit="batch",
                              disable=not progress, leave=False):
                for args, kwargs in _batch_inputs(batch, tokenizer, device):
                    model(*args, **kwargs)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("compress: the calibration iterable yielded no batches")
    for name, a in amax.items():
        if not bool(torch.isfinite(a).all()):
            channels = (~torch.isfinite(a)).nonzero().flatten()[:5].tolist()
            raise ValueError(f"compress: calibration statistics of {name}'s input hold NaN or Inf "
                             f"(input channels {channels}); the model produces non-finite activations on this data")
    return amax
