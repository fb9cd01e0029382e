"""Method "sparse_attention": a sliding-window attention pattern with sink tokens, recorded on the model.

Unlike the per-layer methods this one changes no weight. It writes the pattern into the HF config,

    model.config.slimrt_attention = {"kind": "sliding_window", "window": W, "num_global": G, "block_size": B}

which the checkpoint stores with the config (and validates at load, ``validate_pattern``), and the
recipe into ``model.slimrt_meta`` like every method; the report lists it under "model-level".
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

from slimrt.compress.swap import Context, Fallback, Method, register

KIND = "sliding_window"
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
_FIELDS = ("kind", "window", "num_global", "block_size")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_window(v: int) -> str | None:
    return None if v >= 1 else "must be an int >= 1 (the number of most recent keys each query sees)"


def _check_num_global(v: int) -> str | None:
    return None if v >= 0 else "must be an int >= 0 (the number of sink tokens)"


def _check_block_size(v: int) -> str | None:
    return None if 1 <= v <= 4096 else "must be an int in [1, 4096]"


def validate_pattern(pattern: Any) -> str | None:
    """None if ``pattern`` is a valid config.slimrt_attention dict, else a sentence naming the bad field."""
    if not isinstance(pattern, dict):
        return f"must be an object {{kind, window, num_global, block_size}}, got {type(pattern).__name__}"
    unknown = sorted(set(pattern) - set(_FIELDS))
    if unknown:
        return f"has unknown field {unknown[0]!r}; fields are {', '.join(_FIELDS)}"
    if pattern.get("kind") != KIND:
        return f"field 'kind' is {pattern.get('kind')!r}; the only supported kind is {KIND!r}"
    for name, check in (("window", _check_window), ("num_global", _check_num_global),
                        ("block_size", _check_block_size)):
        v = pattern.get(name)
        problem = check(v) if _int(v) else "must be an int"
        if problem:
            return f"field {name!r} is {v!r}: {problem}"
    return None


def read_pattern(config: Any) -> dict[str, int] | None:
    """The validated pattern on a model config, or None; ValueError naming the field if it is bad."""
    pattern = getattr(config, "slimrt_attention", None)
    if pattern is None:
        return None
    problem = validate_pattern(pattern)
    if problem:
        raise ValueError(f"model.config.slimrt_attention {problem}")
    return {k: pattern[k] for k in ("window", "num_global", "block_size")}


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
                params={"window": (int, 0, _check_window), "num_global": (int, 4, _check_num_global),
                        "block_size": (int, 64, _check_block_size)},
                apply_model=_apply))
