"""w4 quality on SmolLM2-135M: perplexity of int4 variants (group size, rounding) against fp32.

The same windows and scoring as bench_llamacpp.py (pydoc "eval" paragraphs, 512-token windows, the
second half of each scored), without llama.cpp: for choosing the w4 presets' defaults. Each variant is
`slimrt.compress(model, Recipe(methods=("w4",), params={"w4": PARAMS}))` on the dense model (GPTQ
calibrates on slimrt's own "calibration" paragraphs); `deq` evaluates the same codes with float
activations (the dequantized weight in an nn.Linear), to separate the weight error from the
activation quantization of the kernel.

    python benchmarks/quality_w4.py [--windows 4] ["{'group_size': 32}" "{'group_size': 64, 'rounding': 'gptq'}" ...]
    python benchmarks/quality_w4.py --layers     # per-layer output SQNR: RTN, RTN + clip search, GPTQ

--layers: for a few SmolLM2 linears, the output SQNR (dB) on held-out text (32 "calibration"
paragraphs for GPTQ's Gram matrix, 16 "eval" ones to score) of the int4 weight (groups of 32, zero
points) rounded to nearest, with the clip search, and by GPTQ: the rounding methods without the
whole-model cost.
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import ast
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llamacpp import default_gguf, nll_second_half, text_windows  # noqa: E402

DEFAULT = ["{'group_size': 32}", "{'group_size': 64}", "{'group_size': 32, 'rounding': 'gptq'}",
           "{'group_size': 64, 'rounding': 'gptq'}"]


def perplexity(model, windows: list[list[int]]) -> float:
    nll = n = 0
    with torch.inference_mode():
        for w in windows:
            a, b = nll_second_half(model(input_ids=torch.tensor([w])).logits[0].float(), w)
            nll, n = nll + a, n + b
    return math.exp(nll / n)


def dequantized(model):
    """Every W4Linear replaced by an nn.Linear holding its dequantized weight (float activations)."""
    from slimrt.nn import W4Linear

    for name, mod in list(model.named_modules()):
        if isinstance(mod, W4Linear):
            lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            lin.weight.data = mod.dequantized_weight()
            if mod.bias is not None:
                lin.bias.data = mod.bias.float()
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, lin)
    return model


LAYERS = ("model.layers.5.self_attn.q_proj", "model.layers.5.mlp.down_proj", "model.layers.20.mlp.gate_proj",
          "model.layers.20.self_attn.o_proj")


def layer_sqnr(model, tok, group_size: int = 32) -> None:
    from slimrt.compress.w4 import gptq_quantize
    from slimrt.data import pydoc_paragraphs
    from slimrt.ops import reference_w4 as R

    acts: dict[str, list[torch.Tensor]] = {n: [] for n in LAYERS}
    for n in LAYERS:  # x (tokens, K) of each layer's input
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: acts[n].append(a[0].detach().reshape(-1, a[0].shape[-1])))

    def inputs(texts: list[str]) -> dict[str, torch.Tensor]:
        for v in acts.values():
            v.clear()
        with torch.no_grad():
            for t in texts:
                model(**tok(t, return_tensors="pt", truncation=True, max_length=512))
        return {n: torch.cat(v).float() for n, v in acts.items()}

    cal, ev = inputs(pydoc_paragraphs("calibration")[:32]), inputs(pydoc_paragraphs("eval")[:16])
    for n in LAYERS:
        w = model.get_submodule(n).weight.detach().float()
        k, x = w.shape[1], ev[n]
        want = x @ w.T

        def sqnr(deq: torch.Tensor) -> float:
            return float(10 * torch.log10(want.pow(2).sum() / (x @ deq.T - want).pow(2).sum()))

        rtn = R.dequantize(*R.quantize(w, group_size, True, clip_search=False), group_size, k)
        clip = R.dequantize(*R.quantize(w, group_size, True), group_size, k)
        xc = cal[n].double()
        gptq = R.dequantize(*gptq_quantize(w, xc.T @ xc, group_size, True), group_size, k)
        print(f"{n}: output SQNR on held-out text, rtn {sqnr(rtn):.2f} dB, rtn + clip search {sqnr(clip):.2f} dB, "
              f"gptq {sqnr(gptq):.2f} dB", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("variants", nargs="*", default=DEFAULT, help="w4 params as Python dict literals (+ 'deq': True)")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--layers", action="store_true", help="per-layer output SQNR of the rounding methods instead")
    args = ap.parse_args(argv)
    import slimrt
    from slimrt.gguf import load_gguf
    from slimrt.recipe import EMBEDDINGS_IGNORE, Recipe

    model, tok = load_gguf(Path(args.gguf) if args.gguf else default_gguf())
    if args.layers:
        layer_sqnr(model, tok)
        return 0
    windows = text_windows(tok, max(args.windows, 2))[:args.windows]
    base = perplexity(model, windows)
    print(f"SmolLM2-135M, {args.windows} windows, {torch.get_num_threads()} threads\nfp32: {base:.4f}", flush=True)
    for spec in args.variants:
        params = ast.literal_eval(spec)
        deq = params.pop("deq", False)
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        slimrt.compress(m, Recipe(methods=("w4",), params={"w4": params}, ignore=EMBEDDINGS_IGNORE), tokenizer=tok,
                        progress=False)
        took = time.perf_counter() - t0
        v = perplexity(dequantized(m) if deq else m, windows)
        print(f"w4 {params}{' (float activations)' if deq else ''}: {v:.4f} ({100 * (v / base - 1):+.2f}% vs fp32), "
              f"compress {took:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
