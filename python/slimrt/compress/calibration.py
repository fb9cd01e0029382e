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

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# Strings are cut to this many tokens: calibration needs typical activations, not long contexts.
MAX_CALIBRATION_TOKENS = 512


def max_calibration_tokens(model: nn.Module) -> int:
    """MAX_CALIBRATION_TOKENS, or the model's own context where that is shorter."""
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(MAX_CALIBRATION_TOKENS, ctx) if isinstance(ctx, int) and ctx > 0 else MAX_CALIBRATION_TOKENS


def _batch_inputs(batch: Any, tokenizer: Any, device: torch.device,
                  max_tokens: int = MAX_CALIBRATION_TOKENS) -> list[tuple[tuple, dict]]:
    """One batch -> [(args, kwargs)] model calls (several when strings cannot be padded together)."""
    if isinstance(batch, str) or (isinstance(batch, Sequence) and not isinstance(batch, Tensor) and batch
                                  and all(isinstance(s, str) for s in batch)):
        if tokenizer is None:
            raise ValueError("compress: calibration yields strings, so a tokenizer is required; pass "
                             "tokenizer=AutoTokenizer.from_pretrained(...) or token id tensors")
        texts = [batch] if isinstance(batch, str) else list(batch)
        kw = dict(return_tensors="pt", truncation=True, max_length=max_tokens)
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


def observe_inputs(model: nn.Module, targets: Mapping[str, tuple[nn.Module, Callable[[Tensor], Tensor]]],
                   calibration: Iterable[Any], tokenizer: Any = None, *, combine: str = "sum",
                   progress: bool = True, desc: str = "slimrt calibration",
                   shared: dict[str, list[str]] | None = None) -> dict[str, Tensor]:
    """The one calibration pass every method uses: runs the model (eval mode, no grad) over the
    batches and, for each ``name: (module, stat)``, folds ``stat(x)`` of the module's input
    x (tokens, K) over all batches by ``combine`` ("sum" or elementwise "max").

    Raises ValueError if the iterable is empty or a statistic holds NaN/Inf (naming the module).
    Modules no batch reached are absent from the result.

    ``shared``, when given, is filled with {name: [names of the targets that read the same input]}
    (itself included, in call order): modules called one after another on the same tensor object
    (q/k/v on the normed hidden state, gate/up) at every call of every batch. Only back-to-back
    calls count, and the last input is held so its address cannot be reused: a conservative test
    that never groups modules whose inputs differ.
    """
    from tqdm.auto import tqdm

    if combine not in ("sum", "max"):
        raise ValueError(f"observe_inputs: combine={combine!r} is not one of sum, max")
    out: dict[str, Tensor] = {}
    # For ``shared``: the input of the latest hooked call, its group number, and each name's groups.
    last: list[Any] = [None, -1]
    seen: dict[str, list[int]] = {}

    def hook_for(name: str, stat: Callable[[Tensor], Tensor]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            if shared is not None:
                if x is not last[0]:
                    last[0], last[1] = x, last[1] + 1
                seen.setdefault(name, []).append(last[1])
            v = stat(x.detach().reshape(-1, x.shape[-1]))  # x: (..., K) -> (tokens, K)
            if name not in out:
                out[name] = v
            else:
                out[name] = out[name] + v if combine == "sum" else torch.maximum(out[name], v)
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n, stat), with_kwargs=True) for n, (m, stat) in targets.items()]
    was_training = model.training
    device = _device(model)
    n_batches = 0
    try:
        model.eval()  # dropout off: statistics of the model as it will run
        total = len(calibration) if hasattr(calibration, "__len__") else None
        with torch.no_grad():
            for batch in tqdm(calibration, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
                for args, kwargs in _batch_inputs(batch, tokenizer, device, max_calibration_tokens(model)):
                    model(*args, **kwargs)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        last[0] = None
    if shared is not None:
        by_calls: dict[tuple[int, ...], list[str]] = {}
        for name, calls in seen.items():
            by_calls.setdefault(tuple(calls), []).append(name)
        shared.update({name: group for group in by_calls.values() for name in group})
    if n_batches == 0:
        raise ValueError("compress: the calibration iterable yielded no batches (pass a list, not a used-up "
                         "generator: each method reads it once)")
    for name, v in out.items():
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"compress: calibration statistics of {name}'s input hold NaN or Inf; the model "
                             "produces non-finite activations on this data")
    return out


def collect_input_amax(model: nn.Module, modules: list[nn.Module], names: list[str], calibration: Iterable[Any],
                       tokenizer: Any = None, progress: bool = True,
                       shared: dict[str, list[str]] | None = None) -> dict[str, Tensor]:
    """{name: max |x| per input channel (K,) float32} of each listed module's input x (and, into
    ``shared``, which modules read the same input: see observe_inputs)."""
    # NaN propagates through amax, so a non-finite activation is reported, not hidden.
    stat = lambda x: x.float().abs().amax(dim=0)  # noqa: E731
    return observe_inputs(model, {n: (m, stat) for m, n in zip(modules, names)}, calibration, tokenizer,
                          combine="max", progress=progress, shared=shared)
