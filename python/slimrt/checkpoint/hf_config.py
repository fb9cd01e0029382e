"""Type and range checks of the Hugging Face config values slimrt's runner reads.

transformers builds a model from almost any config: a negative epsilon, a zero head count or an
activation name nobody defines become NaN outputs, a ZeroDivisionError or a ValueError deep inside
the runner instead of an error about the checkpoint. Each value the lean forwards (slimrt.models)
or the native decode step read is checked here, before the skeleton is built, and a bad one is a
CheckpointError naming slimrt.json and the field. Values that are valid but that the runner does
not run pass (Hugging Face can still run the model); the runner then refuses them, naming the
checkpoint (Runner.from_checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from slimrt.errors import CheckpointError

_SIZE_CAP = 2**31  # every size below fits an int32 index; real configs are far below

# Sizes (>= 1) and counts (>= 0); None is allowed where the config means "derive it".
_SIZES = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
          "n_embd", "n_head", "n_positions")
_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "n_inner")
_COUNTS = ("num_hidden_layers", "n_layer", "type_vocab_size")
_OPTIONAL_COUNTS = ("sliding_window",)  # 0 or null: no window
# Norm epsilons: added to a variance, so positive; real ones are 1e-12..1e-5, and above 0.1 the
# epsilon, not the data, sets the normalisation.
_EPSILONS = ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps")
_EPS_MAX = 0.1
_BOOLS = ("tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "use_sliding_window")
_ACTIVATIONS = ("hidden_act", "activation_function")


def position_embedding_types() -> tuple[str, ...]:
    """What the installed transformers' BERT runs. Any other string silently means "absolute" there,
    and transformers 5 dropped the relative kinds, so a checkpoint naming one describes a model that
    would run with the wrong attention."""
    import transformers

    relative = int(transformers.__version__.split(".")[0]) < 5
    return ("absolute", "relative_key", "relative_key_query") if relative else ("absolute",)


def _bad(key: str, value: Any, expected: str) -> CheckpointError:
    return CheckpointError(f"slimrt.json: field 'model.config.{key}' is {value!r}; expected {expected}")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _activation_names() -> set[str]:
    from transformers.activations import ACT2FN

    return set(ACT2FN.keys())


def check(cfg: dict[str, Any], model_type: str | None, activations: Collection[str] | None = None,
          position_types: Collection[str] | None = None) -> None:
    """Raises CheckpointError for the first config value (of those the runner reads) of a wrong type
    or outside its range; ``model_type`` is the architecture's own (the config may not change it).
    ``activations`` and ``position_types`` are the names allowed (default: what the installed
    transformers defines); the thin skeleton passes its own, and transformers is then not imported."""
    given = cfg.get("model_type")
    if given is not None and model_type is not None and given != model_type:
        raise _bad("model_type", given, f"{model_type!r}, the model type of the stored architecture")
    for key in _SIZES + _OPTIONAL_SIZES:
        value = cfg.get(key)
        if value is None and (key in _OPTIONAL_SIZES or key not in cfg):
            continue
        if not _int(value) or not 1 <= value < _SIZE_CAP:
            raise _bad(key, value, f"an integer from 1 to {_SIZE_CAP - 1}")
    for key in _COUNTS + _OPTIONAL_COUNTS:
        if key in cfg and not (cfg[key] is None and key in _OPTIONAL_COUNTS) \
                and (not _int(cfg[key]) or not 0 <= cfg[key] < _SIZE_CAP):
            raise _bad(key, cfg[key], "a non-negative integer")
    for key in _EPSILONS:
        if key in cfg and (not _number(cfg[key]) or not 0 < cfg[key] <= _EPS_MAX):
            raise _bad(key, cfg[key], f"a number in (0, {_EPS_MAX}]")
    for key in _BOOLS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise _bad(key, cfg[key], "true or false")
    for key in _ACTIVATIONS:
        if key in cfg and cfg[key] is not None:
            names = set(activations) if activations is not None else _activation_names()
            if not isinstance(cfg[key], str) or cfg[key] not in names:
                raise _bad(key, cfg[key], f"an activation transformers defines ({', '.join(sorted(names))})")
    if "position_embedding_type" in cfg:
        kinds = tuple(position_types) if position_types is not None else position_embedding_types()
        if cfg["position_embedding_type"] not in kinds:
            raise _bad("position_embedding_type", cfg["position_embedding_type"],
                       f"one of {', '.join(kinds)} (what transformers runs)")
    _check_heads(cfg)
    _check_rope(cfg)


def _check_heads(cfg: dict[str, Any]) -> None:
    """Head counts the attention reshapes rely on: C = H * D unless head_dim is explicit, H = k * Hkv."""
    for width, heads in (("hidden_size", "num_attention_heads"), ("n_embd", "n_head")):
        c, h = cfg.get(width), cfg.get(heads)
        if _int(c) and _int(h) and cfg.get("head_dim") is None and c % h:
            raise _bad(heads, h, f"a divisor of {width}={c}")
    h, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if _int(h) and _int(kv) and h % kv:
        raise _bad("num_key_value_heads", kv, f"a divisor of num_attention_heads={h}")


def _check_rope(cfg: dict[str, Any]) -> None:
    if "rope_theta" in cfg and (not _number(cfg["rope_theta"]) or cfg["rope_theta"] <= 0):
        raise _bad("rope_theta", cfg["rope_theta"], "a positive number")
    for key in ("rope_scaling", "rope_parameters"):
        params = cfg.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise _bad(key, params, "an object or null")
        for name in ("rope_type", "type"):
            if name in params and not isinstance(params[name], str):
                raise _bad(f"{key}.{name}", params[name], "a string")
        for name in ("rope_theta", "factor"):
            if name in params and (not _number(params[name]) or params[name] <= 0):
                raise _bad(f"{key}.{name}", params[name], "a positive number")
        if "partial_rotary_factor" in params and (not _number(params["partial_rotary_factor"])
                                                  or not 0 < params["partial_rotary_factor"] <= 1):
            raise _bad(f"{key}.partial_rotary_factor", params["partial_rotary_factor"], "a number in (0, 1]")
