"""Method "w4": nn.Linear / Conv1D -> W4Linear (int4 weights in groups along K; ops/reference_w4.py).

Params: ``group_size`` (32, 64, 128; default 32), ``zero_point`` (asymmetric groups, default on), ``head`` ("w8":
the output head becomes a weight-only Int8Linear, or "w4") and ``rounding``:
  - "rtn": round to nearest, per group (no calibration);
  - "gptq": GPTQ (Frantar et al. 2022): the columns are rounded in order and each one's rounding error
    is spread over the columns not yet rounded, weighted by the inverse of the input Gram matrix
    H = X^T X from calibration text, so the layer's output error ||(W - W') X^T|| is what is
    minimized, not the weight error. Group scales and zero points are set from the error-updated
    weights when the first column of a group is reached.

Why GPTQ and not AWQ's activation-aware scaling: AWQ multiplies salient input channels of W by s and
divides x by s, which must be folded into the previous op (the norm, or the previous linear) per
model family, or kept as a per-call multiply that the native decode step does not run. GPTQ changes
the codes only: the same W4Linear, the same kernels and checkpoint layout, any family.
The Hessians come from the dense model in one calibration pass (not layer-by-layer through the
already-quantized model): one forward pass instead of one per layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from slimrt import ops
from slimrt.compress.int8 import is_output_head
from slimrt.compress.swap import Context, Method, is_linear_like, quantizable_weight, register
from slimrt.nn.int8_linear import Int8Linear
from slimrt.nn.w4_linear import W4Linear
from slimrt.ops import reference_w4
from slimrt.recipe import EMBEDDINGS_IGNORE, Recipe, register_preset

GPTQ_BLOCK = 128  # columns per lazy-update block (a multiple of every group size)
GPTQ_DAMP = 0.01  # fraction of the mean Hessian diagonal added to it (GPTQ's default)


def kernel_name(device: torch.device) -> str:
    impl = ops.backend().get(device.type, "reference")
    if impl == "native":
        from slimrt import _native

        impl = f"native:{_native.load().active_isa()}"
    return f"w4_linear[{impl}]"


def gptq_quantize(weight: Tensor, gram: Tensor, group_size: int, zero_point: bool,
                  damp: float = GPTQ_DAMP) -> tuple[Tensor, Tensor, Tensor | None]:
    """GPTQ rounding of weight (N, K) with the input Gram matrix gram (K, K) -> (w_q4, w_scale, w_zero)."""
    w = weight.detach().float().clone()  # (N, K), updated in place as errors are spread
    n, k = w.shape
    h = gram.double().clone()
    dead = torch.diagonal(h) == 0  # inputs that were always zero: any code works; make them exact zeros
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype)
    # Upper Cholesky factor of H^-1: row i holds the update weights for the columns after i.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    ng = reference_w4.num_groups(k, group_size)
    scale = torch.empty((n, ng), dtype=torch.float16)
    zero = torch.empty((n, ng), dtype=torch.float32)
    codes = torch.empty((n, k), dtype=torch.uint8)
    for i1 in range(0, k, GPTQ_BLOCK):
        i2 = min(i1 + GPTQ_BLOCK, k)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            g = col // group_size
            if col % group_size == 0:  # the group's grid, from its current (error-updated) weights
                _, s, z = reference_w4.quantize(w1[:, i:i + group_size], group_size, zero_point)
                scale[:, g] = s[:, 0]
                zero[:, g] = z[:, 0].float() if z is not None else 8.0
                s32, z32 = scale[:, g].float(), zero[:, g]
            c = (torch.round(w1[:, i] / s32) + z32).clamp_(0, 15)  # quantize_codes for one column
            codes[:, col] = c.to(torch.uint8)
            e = (w1[:, i] - (c - z32) * s32) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return (reference_w4.pack_codes(codes, group_size), scale,
            zero.to(torch.uint8) if zero_point else None)


def _convert(name: str, module: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    p = ctx.params
    weight, bias = quantizable_weight(name, module, "w4")
    n, k = weight.shape
    if p["head"] == "w8" and is_output_head(ctx.model, module):
        from slimrt.compress.int8 import kernel_name as int8_kernel

        new8 = Int8Linear.from_weight(weight, bias, mode="w8")
        return new8, {"kernel": int8_kernel("w8", weight.device), "in_features": k, "out_features": n, "mode": "w8",
                      "note": "output head kept int8 (w4 param head='w8')"}
    g, zp = p["group_size"], p["zero_point"]
    codes, method = None, "rtn"
    if p["rounding"] == "gptq":
        gram = ctx.state.get("w4", {}).get(name)
        if gram is not None:
            codes, method = gptq_quantize(weight.cpu(), gram, g, zp), "gptq"
    new = W4Linear.from_weight(weight, bias, g, zp, codes=codes, method=method)
    info = {"kernel": kernel_name(weight.device), "in_features": k, "out_features": n, "mode": "w4",
            "group_size": g, "zero_point": zp, "rounding": method}
    if p["rounding"] == "gptq" and method == "rtn":
        info["note"] = "no calibration batch reached this layer: rounded to nearest"
    return new, info


def _prepare(model: nn.Module, todo: list[tuple[str, nn.Module]], ctx: Context, calibration: Iterable[Any] | None,
             tokenizer: Any, progress: bool) -> None:
    """GPTQ: the input Gram matrix of every layer that will be rounded to w4, in one calibration pass."""
    if ctx.params["rounding"] != "gptq":
        return
    if calibration is None:
        raise ValueError("compress: w4 rounding='gptq' needs calibration data (calibration=[batches], a tokenizer "
                         "for slimrt's own text, or --calibration FILE); or use rounding='rtn'")
    from slimrt.compress.lowrank import collect_input_gram

    layers = [(n, m) for n, m in todo if not (ctx.params["head"] == "w8" and is_output_head(model, m))]
    ctx.state["w4"] = collect_input_gram(model, [m for _, m in layers], [n for n, _ in layers], calibration,
                                         tokenizer, progress)


def _one_of(options: tuple) -> Any:
    return lambda v: None if v in options else f"must be one of {', '.join(map(repr, options))}, got {v!r}"


PARAMS = {
    "group_size": (int, 32, _one_of(reference_w4.GROUP_SIZES)),
    "zero_point": (bool, True, None),
    "head": (str, "w8", _one_of(("w8", "w4"))),
    "rounding": (str, "rtn", _one_of(("rtn", "gptq"))),
}

register(Method(name="w4", group="quantize", accepts=is_linear_like, convert=_convert, params=PARAMS,
                uses_calibration=lambda recipe: recipe.params.get("w4", {}).get("rounding", "rtn") == "gptq",
                prepare=_prepare))
# Body int4 (groups of 32 along K with zero points: 0.594 bytes per weight), head int8 weight-only.
# Group 32, not 64: SmolLM2-135M perplexity (benchmarks/quality_w4.py, 6 windows, round to nearest
# without clip search) +22.1% over fp32 at 32 against +30.8% at 64 (llama.cpp Q4_0: about +23%).
register_preset("w4", Recipe(methods=("w4",), ignore=EMBEDDINGS_IGNORE))
register_preset("w4-gptq", Recipe(methods=("w4",), ignore=EMBEDDINGS_IGNORE, params={"w4": {"rounding": "gptq"}}))
