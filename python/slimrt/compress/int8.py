"""Methods "w8a8" and "w8": nn.Linear / Conv1D -> Int8Linear (int8 per-output-channel weights).

w8a8 quantizes activations per token at run time (optionally after SmoothQuant migration, which
needs calibration data); w8 keeps activations in float and dequantizes weights on the fly.

The presets quantize the model's output head as well. Under w8a8 the head is weight-only (w8) by
default (param ``head``): its input is the final hidden state, whose per-token rounding goes straight
into the logits (SmolLM2-135M, perplexity on pydoc text: head w8a8 +3.0%, head w8 +1.6% over fp32),
and at decode (M = 1), where the head's cost is reading its weight, w8a8 saves nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimrt import ops
from slimrt.compress.smoothquant import smoothing_factors
from slimrt.compress.swap import Context, Method, is_linear_like, linear_weight, quantizable_weight, register
from slimrt.nn.int8_linear import Int8Linear
from slimrt.recipe import EMBEDDINGS_IGNORE, Recipe, register_preset

_OP = {"w8a8": "int8_linear", "w8": "int8_weight_only_linear"}


def kernel_name(mode: str, device: torch.device) -> str:
    """The op and implementation that will serve this module, e.g. 'int8_linear[native:avx512]'."""
    impl = ops.backend().get(device.type, "reference")
    if impl == "native":
        from slimrt import _native

        impl = f"native:{_native.load().active_isa()}"
    return f"{_OP[mode]}[{impl}]"


def is_output_head(model: nn.Module | None, module: nn.Module) -> bool:
    """Whether module is the model's projection to the vocabulary (transformers' get_output_embeddings)."""
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return False
    try:
        return get() is module
    except (AttributeError, NotImplementedError):
        return False


def _convert(mode: str, name: str, module: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    if mode == "w8a8" and ctx.params.get("head", "w8") == "w8" and is_output_head(ctx.model, module):
        mode = "w8"  # weight-only head: see the module doc
    weight, bias = quantizable_weight(name, module, "int8")
    n, k = weight.shape
    info: dict[str, Any] = {"kernel": kernel_name(mode, weight.device), "in_features": k, "out_features": n,
                            "mode": mode}
    smooth = None
    if mode == "w8a8" and ctx.recipe.smoothquant:
        smooth = ctx.state.get("w8a8", {}).get(name)
        if smooth is None:
            info["smoothquant"] = "skipped: no calibration batch reached this layer"
        else:
            smooth = smooth.to(weight.device)
            group = ctx.state["w8a8_groups"].get(name, [name])
            info["smoothquant"] = f"alpha={ctx.recipe.alpha}" + (f", joint with {len(group) - 1} more" if len(group) > 1 else "")
    new = Int8Linear.from_weight(weight, bias, mode=mode, smooth=smooth)
    new.train(module.training)
    return new, info


def _prepare_smoothing(model: nn.Module, todo: list[tuple[str, nn.Module]], ctx: Context, *_: Any) -> None:
    """SmoothQuant multipliers for every w8a8 layer, before any is converted: linears that read one
    input tensor (q/k/v, gate/up; ``ctx.shared_input``) get one vector, from that input's maxima and
    the maxima over all their weights' columns (the paper's per-LayerNorm smoothing, found without
    knowing the architecture), so they still share one input and run fused in the native step."""
    if not ctx.recipe.smoothquant:
        return
    mods = {name: m for name, m in todo
            if not (ctx.params.get("head", "w8") == "w8" and is_output_head(model, m)) and name in ctx.act_amax}
    smooth: dict[str, Tensor] = {}
    groups: dict[str, list[str]] = {}
    for name in mods:
        if name in smooth:
            continue
        group = [n for n in ctx.shared_input.get(name, [name]) if n in mods and n not in smooth]
        if name not in group:
            group = [name]
        weights = [linear_weight(mods[n])[0] for n in group]
        if len(group) > 1 and (len({w.shape[1] for w in weights}) != 1
                               or not all(bool(torch.isfinite(w).all()) for w in weights)):
            group, weights = [name], [linear_weight(mods[name])[0]]  # convert() names a non-finite weight
        act = torch.stack([ctx.act_amax[n].float() for n in group]).amax(dim=0)
        w = weights[0] if len(weights) == 1 else torch.cat([w.detach().float() for w in weights])
        inv = 1.0 / smoothing_factors(act.to(w.device), w, ctx.recipe.alpha)
        for n in group:
            smooth[n], groups[n] = inv, group
    ctx.state["w8a8"], ctx.state["w8a8_groups"] = smooth, groups


def _check_head(value: Any) -> str | None:
    return None if value in ("w8", "w8a8") else f"must be 'w8' or 'w8a8', got {value!r}"


register(Method(name="w8a8", group="quantize", accepts=is_linear_like,
                convert=lambda name, module, ctx: _convert("w8a8", name, module, ctx),
                needs_calibration=lambda recipe: recipe.smoothquant, prepare=_prepare_smoothing,
                params={"head": (str, "w8", _check_head)}))
register(Method(name="w8", group="quantize", accepts=is_linear_like,
                convert=lambda name, module, ctx: _convert("w8", name, module, ctx)))
register_preset("w8a8", Recipe(methods=("w8a8",), ignore=EMBEDDINGS_IGNORE))
register_preset("w8", Recipe(methods=("w8",), ignore=EMBEDDINGS_IGNORE))
# SmoothQuant before w8a8: activation outliers migrate into the weights (alpha 0.5). On SmolLM2-135M
# (perplexity on pydoc text, 16 windows): w8a8 +2.26% over fp32, w8a8-sq +0.99% (alpha 0.3: +1.40%).
# Calibration defaults to slimrt's own text.
register_preset("w8a8-sq", Recipe(methods=("w8a8",), ignore=EMBEDDINGS_IGNORE, smoothquant=True, alpha=0.5))
