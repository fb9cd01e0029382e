"""What the sweep measures of one model: stored bytes, speed and quality against the uncompressed model.

Speed runs on a Runner with the default kernel policy (what ``slimrt.load`` gives a user); quality
on Runners with each Int8Linear running its own mode (as ``slimrt.evaluate`` does), so it does not
depend on batch size.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from torch import nn


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the checkpoint slimrt.save writes for ``model`` (tensors + slimrt.json, no tokenizer),
    measured on disk in a temporary directory."""
    from slimrt.checkpoint import save

    with tempfile.TemporaryDirectory(prefix="slimrt-sweep-") as tmp:
        path = os.path.join(tmp, "ckpt")
        save(model, path)
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def fitting_presets(model: nn.Module, kind: str) -> list[str]:
    """The registered presets (in registration order) that act on this model: one of their layer
    methods accepts a module the preset selects. A preset of model-level methods only (the
    sliding-window pattern) fits decoders, the only forwards that run such patterns."""
    import slimrt.compress  # noqa: F401  (registers the methods and presets)
    from slimrt.compress.swap import METHODS
    from slimrt.recipe import PRESETS

    modules = list(model.named_modules())
    names = []
    for name, recipe in PRESETS.items():
        layer = [METHODS[m] for m in recipe.methods if METHODS[m].apply_model is None]
        if not layer:
            fits = kind == "decoder"
        else:
            fits = any(recipe.matches(n) and any(m.accepts(mod) for m in layer) for n, mod in modules if n)
        if fits:
            names.append(name)
    return names


def prompt_ids(tokenizer: Any, texts: Sequence[str], n: int) -> list[int]:
    """n token ids of the texts joined (repeated if they are shorter): the timing prompt."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the texts tokenize to nothing; no prompt to time")
    return (ids * (n // len(ids) + 1))[:n]


def speed_lengths(max_len: int, prefill: int, decode: int) -> tuple[int, int]:
    """(prefill, decode) token counts that fit a context of max_len (prompt + generated), shrunk in
    proportion when they do not (tiny test models have 64 positions)."""
    if prefill < 1 or decode < 2:
        raise ValueError(f"prefill tokens={prefill} must be >= 1 and decode tokens={decode} >= 2")
    if prefill + decode <= max_len:
        return prefill, decode
    p = max(1, max_len * prefill // (prefill + decode))
    return p, max(2, max_len - p)


def decoder_speed(runner: Any, prompt: Sequence[int], decode: int, reps: int) -> dict[str, float]:
    """Batch 1, greedy: prefill tokens/s of the prompt and decode tokens/s of the steps after it
    (each step one forward of one token and its argmax), best of ``reps`` after a warm-up."""
    runner.generate_ids([list(prompt[:8])], 2, eos=False)  # first calls allocate caches, fault in pages
    best_p = best_d = math.inf
    for _ in range(reps):
        stats: dict = {}
        runner.generate_ids([list(prompt)], decode, eos=False, stats=stats)
        best_p = min(best_p, stats["prefill_s"])
        # decode_s holds decode - 1 forwards (the first new token comes out of the prefill) and decode argmaxes.
        best_d = min(best_d, stats["decode_s"] / (stats["new_tokens"] - 1))
    return {"prefill_tokens_per_s": len(prompt) / best_p, "decode_tokens_per_s": 1.0 / best_d}


def encoder_speed(runner: Any, texts: Sequence[str], reps: int, batch_size: int = 32) -> dict[str, float]:
    """Sentences/s of ``runner.embed`` over the texts (batches of batch_size), best of ``reps`` after a warm-up."""
    runner.embed(list(texts[:batch_size]), batch_size=batch_size)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.embed(list(texts), batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return {"sentences_per_s": len(texts) / best}


def quality(model: nn.Module, reference: Any, tokenizer: Any, texts: Sequence[str], settings: dict[str, Any],
            max_tokens: int) -> dict[str, Any]:
    """The sweep's quality fields for ``model`` against the reference Runner (slimrt.evaluate)."""
    from slimrt.evaluate import evaluate
    from slimrt.models import KernelPolicy
    from slimrt.runner import Runner

    rt = Runner(model, tokenizer, policy=KernelPolicy(mode="module"), **settings)
    r = evaluate(rt, reference, texts, tokenizer=tokenizer, max_tokens=max_tokens, progress=False)
    return quality_fields(r)


def quality_fields(r: dict[str, Any]) -> dict[str, Any]:
    """slimrt.evaluate's result -> the sweep's quality columns."""
    if r["kind"] == "decoder":
        return {"ppl": r.get("ppl_compressed"), "ppl_ratio": r.get("ppl_ratio"), "kl": r["kl"], "top1": r["top1"],
                "_ppl_reference": r.get("ppl_reference")}
    return {"cos_min": r["cos_min"], "cos_mean": r["cos_mean"], "retrieval_top5": r.get("retrieval_top5"),
            "spearman": r.get("spearman")}


__all__ = ["stored_bytes", "fitting_presets", "prompt_ids", "speed_lengths", "decoder_speed", "encoder_speed",
           "quality", "quality_fields"]
