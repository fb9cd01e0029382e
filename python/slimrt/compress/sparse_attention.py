"""Method "sparse_attention": a sliding-window attention pattern with sink tokens, recorded on the model.

Unlike the per-layer methods this one changes no weight. It writes the pattern into the HF config,

    model.config.slimrt_attention = {"kind": "sliding_window", "window": W, "num_global": G, "block_size": B}

which the checkpoint stores with the config (and validates at load), and the recipe into
``model.slimrt_meta`` like every method; the report lists it under "model-level". The pattern's
format, its validation and its reader live in slimrt.attention (``validate_pattern``,
``read_pattern``), where the checkpoint loader and the runner read them without the compressor.
The slimrt Runner reads the pattern: the decoder forwards (Llama family, GPT-2) then attend with
``slimrt.ops.block_sparse_attention`` over a causal ``sliding_window_mask(window=W, num_global=G)``
and keep a bounded KV cache of G sink slots + a ring buffer of W slots (slimrt.models._common).
A Hugging Face forward of the same model still attends densely: the pattern is the Runner's.

Each query at position p sees key j when j <= p and (p - j < W or j < G): the W most recent keys
(itself included) plus the first G tokens (StreamingLLM sinks).

Only decoder families the Runner runs get the pattern; for any other model (BERT encoders included)
the method records a fallback with the reason and leaves the model unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimrt.attention import PATTERN_CHECKS, PATTERN_KIND, PATTERN_MODEL_TYPES
from slimrt.attention import read_pattern, validate_pattern  # noqa: F401  (importable from here too)
from slimrt.compress.swap import Context, Fallback, Method, register

KIND = PATTERN_KIND
DECODER_TYPES = PATTERN_MODEL_TYPES


def _apply(model: nn.Module, ctx: Context) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in DECODER_TYPES:
        raise Fallback(f"sliding-window attention runs in the slimrt Runner's decoder forwards only "
                       f"({', '.join(DECODER_TYPES)}); model_type={model_type!r} keeps dense attention")
    p = ctx.params
    pattern = {"kind": KIND, "window": p["window"], "num_global": p["num_global"], "block_size": p["block_size"]}
    cfg.slimrt_attention = pattern
    return {"kernel": "block_sparse_attention", **pattern,
            "kv_cache_slots": p["num_global"] + p["window"]}


# window has no sensible default: the recipe must give it (a default of 0 fails the check).
register(Method(name="sparse_attention", group="sparse_attention", accepts=lambda m: False,
                convert=lambda name, module, ctx: (module, {}),
                params={"window": (int, 0, PATTERN_CHECKS["window"]),
                        "num_global": (int, 4, PATTERN_CHECKS["num_global"]),
                        "block_size": (int, 64, PATTERN_CHECKS["block_size"])},
                apply_model=_apply))
