"""Describe a model's architecture as inert JSON, and rebuild an empty (meta-device) skeleton from it.

Three kinds, recorded under "model" in slimrt.json:
- "hf": a transformers model class (by exported name only) and its config dict;
- "sequential": an ``nn.Sequential`` of allow-listed torch layers with their constructor arguments;
- "custom": anything else; the loader then needs the caller's own skeleton instance.
Nothing read from a checkpoint is ever imported, evaluated or used as a class name outside these
allow-lists: the HF architecture must be a ``PreTrainedModel`` subclass exported by transformers.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch
from torch import nn

from slimrt.errors import CheckpointError

# Float dtypes a dense layer may be built in (the names torch uses, without "torch.").
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}
MAX_DEPTH = 8  # nested nn.Sequential levels accepted when loading
_ATTN = ("eager", "sdpa")  # attention implementations restored on load (others need extra kernels)


class SlimrtPlaceholder(nn.Identity):
    """Stands in for a slimrt module inside a rebuilt nn.Sequential until the loader swaps it."""


# type name -> (class, {ctor arg: kind}). Kinds: int, opt_int, float, opt_float, eps, opt_eps (a norm
# epsilon: finite and > 0), bool, ints, gelu.
_LAYERS: dict[str, tuple[type[nn.Module], dict[str, str]]] = {
    "Linear": (nn.Linear, {"in_features": "int", "out_features": "int", "bias": "bool"}),
    "Embedding": (nn.Embedding, {"num_embeddings": "int", "embedding_dim": "int", "padding_idx": "opt_int",
                                 "max_norm": "opt_float", "norm_type": "float", "scale_grad_by_freq": "bool",
                                 "sparse": "bool"}),
    "LayerNorm": (nn.LayerNorm, {"normalized_shape": "ints", "eps": "eps", "elementwise_affine": "bool",
                                 "bias": "bool"}),
    "RMSNorm": (nn.RMSNorm, {"normalized_shape": "ints", "eps": "opt_eps", "elementwise_affine": "bool"}),
    "Dropout": (nn.Dropout, {"p": "float"}),
    "ReLU": (nn.ReLU, {}),
    "GELU": (nn.GELU, {"approximate": "gelu"}),
    "SiLU": (nn.SiLU, {}),
    "Tanh": (nn.Tanh, {}),
    "Sigmoid": (nn.Sigmoid, {}),
    "Identity": (nn.Identity, {}),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope": "float"}),
    "Softmax": (nn.Softmax, {"dim": "opt_int"}),
    "LogSoftmax": (nn.LogSoftmax, {"dim": "opt_int"}),
    "Flatten": (nn.Flatten, {"start_dim": "int", "end_dim": "int"}),
}
_WITH_DTYPE = {"Linear", "Embedding", "LayerNorm", "RMSNorm"}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _first_float_dtype(module: nn.Module) -> str:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return _dtype_name(t.dtype)
    return "float32"


def _describe_layer(layer: nn.Module, slimrt_types: tuple[type, ...]) -> dict[str, Any] | None:
    if isinstance(layer, slimrt_types):
        return {"type": "slimrt"}
    if type(layer) is nn.Sequential:
        inner = [_describe_layer(m, slimrt_types) for m in layer]
        return None if any(d is None for d in inner) else {"type": "Sequential", "layers": inner}
    name = type(layer).__name__
    spec = _LAYERS.get(name)
    if spec is None or type(layer) is not spec[0]:  # exact classes only: a subclass may change forward
        return None
    out: dict[str, Any] = {"type": name}
    for arg in spec[1]:
        value = getattr(layer, arg) if arg != "bias" else layer.bias is not None
        out[arg] = list(value) if isinstance(value, tuple) else value
    if name in _WITH_DTYPE:
        out["dtype"] = _first_float_dtype(layer)
    return out


def describe_model(model: nn.Module, slimrt_types: tuple[type, ...]) -> dict[str, Any]:
    """The "model" section of slimrt.json for ``model`` (see the module docstring)."""
    from slimrt.checkpoint.thin import ThinModel  # here: thin builds on this module

    if isinstance(model, ThinModel):  # a thin load saved again: its own section, kind "hf"
        return model.model_section()
    arch = _hf_architecture(model)
    if arch is not None:
        section: dict[str, Any] = {"kind": "hf", "architecture": arch,
                                   "config": json.loads(model.config.to_json_string(use_diff=False)),
                                   "dtype": _dtype_name(model.dtype)}
        attn = getattr(model.config, "_attn_implementation", None)  # eager vs sdpa changes the last bits
        section["attn_implementation"] = attn if attn in _ATTN else None
        gen = getattr(model, "generation_config", None)
        section["generation_config"] = json.loads(gen.to_json_string(use_diff=False)) if gen is not None else None
        return section
    if type(model) is nn.Sequential:
        layers = _describe_layer(model, slimrt_types)
        if layers is not None:
            return {"kind": "sequential", "layers": layers["layers"]}
    return {"kind": "custom", "class": type(model).__qualname__}


def _hf_architecture(model: nn.Module) -> str | None:
    if not type(model).__module__.startswith("transformers."):
        return None  # never import transformers for a model that is not one of its classes
    import transformers

    name = type(model).__name__
    return name if getattr(transformers, name, None) is type(model) else None


def _arg(value: Any, kind: str, where: str) -> Any:
    def bad(expected: str) -> CheckpointError:
        return CheckpointError(f"slimrt.json: field '{where}' must be {expected}, got {value!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if kind == "int" or (kind == "opt_int" and value is not None):
        if not is_int(value) or abs(value) > 2**62:
            raise bad("an integer")
        return value
    if kind == "float" or (kind == "opt_float" and value is not None):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if kind == "eps" or (kind == "opt_eps" and value is not None):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise bad("a positive finite number")
        return float(value)
    if kind in ("opt_int", "opt_float", "opt_eps"):
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "ints":
        if not isinstance(value, list) or not value or not all(is_int(v) and 0 <= v < 2**40 for v in value):
            raise bad("a non-empty list of non-negative integers")
        return tuple(value)
    if kind == "gelu":
        if value not in ("none", "tanh"):
            raise bad("'none' or 'tanh'")
        return value
    raise AssertionError(kind)


def _build_layers(layers: Any, where: str, depth: int) -> nn.Sequential:
    if depth > MAX_DEPTH:
        raise CheckpointError(f"slimrt.json: field '{where}' nests Sequential deeper than {MAX_DEPTH} levels")
    if not isinstance(layers, list):
        raise CheckpointError(f"slimrt.json: field '{where}' must be a list of layers")
    built: list[nn.Module] = []
    for i, layer in enumerate(layers):
        at = f"{where}[{i}]"
        if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
            raise CheckpointError(f"slimrt.json: field '{at}' must be an object with a string 'type'")
        kind = layer["type"]
        if kind == "slimrt":
            built.append(SlimrtPlaceholder())
            continue
        if kind == "Sequential":
            built.append(_build_layers(layer.get("layers"), f"{at}.layers", depth + 1))
            continue
        if kind not in _LAYERS:
            raise CheckpointError(f"slimrt.json: field '{at}.type' is {kind!r}, not one of the allowed layer types "
                                  f"{sorted(_LAYERS) + ['Sequential', 'slimrt']}")
        cls, spec = _LAYERS[kind]
        allowed = set(spec) | ({"dtype"} if kind in _WITH_DTYPE else set()) | {"type"}
        extra = sorted(set(layer) - allowed)
        if extra:
            raise CheckpointError(f"slimrt.json: field '{at}' has unknown argument {extra[0]!r} for {kind}")
        kwargs = {}
        for arg, arg_kind in spec.items():
            if arg not in layer:
                raise CheckpointError(f"slimrt.json: field '{at}.{arg}' is missing")
            kwargs[arg] = _arg(layer[arg], arg_kind, f"{at}.{arg}")
        if kind in _WITH_DTYPE:
            kwargs["dtype"] = parse_float_dtype(layer.get("dtype", "float32"), f"{at}.dtype")
        try:
            with torch.device("meta"):
                built.append(cls(**kwargs))
        except (ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"slimrt.json: layer '{at}' ({kind}) cannot be built: {e}") from None
    return nn.Sequential(*built)


def parse_float_dtype(value: Any, where: str) -> torch.dtype:
    if not isinstance(value, str) or value not in FLOAT_DTYPES:
        raise CheckpointError(f"slimrt.json: field '{where}' is {value!r}, not one of {sorted(FLOAT_DTYPES)}")
    return FLOAT_DTYPES[value]


def build_skeleton(section: dict[str, Any], n_tensors: int) -> tuple[nn.Module, Any]:
    """An empty model on the meta device from a validated "model" section, and its HF config (or None).

    ``n_tensors`` (how many the checkpoint stores) bounds layer counts: every layer holds at least one
    tensor, so a config claiming more layers is hostile (building a billion meta layers would hang).
    """
    kind = section["kind"]
    if kind == "sequential":
        return _build_layers(section.get("layers"), "model.layers", 0), None
    if kind == "hf":
        return _build_hf(section, n_tensors)
    raise CheckpointError("slimrt.json: the model kind is 'custom', so load needs the model skeleton: "
                          "pass model=<an instance of the original class>")


_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,127}")


_LAYER_COUNT = re.compile(r"(num|n)_(hidden_|encoder_|decoder_)?layers?|(encoder|decoder)_layers")


def _build_hf(section: dict[str, Any], n_tensors: int) -> tuple[nn.Module, Any]:
    import transformers

    arch = section.get("architecture")
    cls = getattr(transformers, arch, None) if isinstance(arch, str) and _CLASS_NAME.fullmatch(arch) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"slimrt.json: field 'model.architecture' is {arch!r}, which is not a model class "
                              f"exported by transformers {transformers.__version__}")
    cfg = section.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError("slimrt.json: field 'model.config' must be an object")
    from slimrt.checkpoint import hf_config

    hf_config.check(cfg, getattr(cls.config_class, "model_type", None))
    for key, value in cfg.items():
        if _LAYER_COUNT.fullmatch(key) and isinstance(value, int) and value > n_tensors:
            raise CheckpointError(f"slimrt.json: field 'model.config.{key}' is {value}, more layers than the "
                                  f"{n_tensors} stored tensors could fill")
    dtype = parse_float_dtype(section.get("dtype", "float32"), "model.dtype")
    cfg = dict(cfg)
    if "use_pretrained_backbone" in cfg:
        cfg["use_pretrained_backbone"] = False  # building the skeleton must never fetch weights
    try:
        config = cls.config_class.from_dict(cfg)
        attn = section.get("attn_implementation")
        kwargs = {"attn_implementation": attn} if attn in _ATTN else {}
        with torch.device("meta"):
            model = cls._from_config(config, dtype=dtype, **kwargs)
    except Exception as e:  # a config that transformers rejects is a bad checkpoint, named as such
        raise CheckpointError(f"slimrt.json: field 'model.config' does not build a {arch}: "
                              f"{type(e).__name__}: {e}") from None
    _apply_resized(model, cfg.get("slimrt_resized"))
    check_attention(cfg.get("slimrt_attention"))
    gen = section.get("generation_config")
    if isinstance(gen, dict) and getattr(model, "generation_config", None) is not None:
        try:
            model.generation_config = transformers.GenerationConfig.from_dict(dict(gen))
        except Exception as e:
            raise CheckpointError(f"slimrt.json: field 'model.generation_config' is invalid: {e}") from None
    return model, config


# ---- attention pattern (slimrt.attention; written by the recipe method sparse_attention) ----

def check_attention(pattern: Any) -> None:
    """The config's ``slimrt_attention`` (sliding window + sinks) must be valid before a Runner reads it."""
    if pattern is None:
        return
    from slimrt.attention import validate_pattern

    problem = validate_pattern(pattern)
    if problem:
        raise CheckpointError(f"slimrt.json: field 'model.config.slimrt_attention' {problem}")


# ---- structured pruning (slimrt.compress.prune) ----

def _apply_resized(model: nn.Module, resized: Any) -> None:
    """Shrinks the skeleton's pruned nn.Linear layers to the shapes recorded in the config's
    ``slimrt_resized`` {layer name: [out_features, in_features]}. Only existing nn.Linear layers can
    be named and they can only shrink, so a hostile entry cannot allocate or reach anything else."""
    if resized is None:
        return
    where = "model.config.slimrt_resized"
    if not isinstance(resized, dict):
        raise CheckpointError(f"slimrt.json: field '{where}' must be an object {{layer: [out, in]}}")
    for name, shape in sorted(resized.items()):
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise CheckpointError(f"slimrt.json: field '{where}.{name}' must be [out_features, in_features] with "
                                  f"positive integers, got {shape!r}")
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            parent = None
        old = None if parent is None else parent._modules.get(leaf)
        if type(old) is not nn.Linear:
            raise CheckpointError(f"slimrt.json: field '{where}' names {name!r}, which is not an nn.Linear layer "
                                  "of the model")
        out_f, in_f = shape
        if out_f > old.out_features or in_f > old.in_features:
            raise CheckpointError(f"slimrt.json: field '{where}.{name}' is {shape}, larger than the layer's "
                                  f"[{old.out_features}, {old.in_features}]; pruning only shrinks layers")
        with torch.device("meta"):
            parent._modules[leaf] = nn.Linear(in_f, out_f, bias=old.bias is not None, dtype=old.weight.dtype)
