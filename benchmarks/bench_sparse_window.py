"""Decode speed and KV-cache memory: dense attention vs the sparse_attention recipe (sliding window + sinks).

  python benchmarks/bench_sparse_window.py            # 2048 new tokens
  python benchmarks/bench_sparse_window.py --quick    # 256 new tokens, CI-sized

A Llama-shaped model with random weights (hidden 256, 4 layers, GQA 8/2 heads of 32, vocab 1000,
fp32), one 32-token prompt, greedy decode. Dense: the Runner's static KV cache of prompt + new
tokens and SDPA over the whole history. Sparse: the same weights compressed with
sparse_attention(window=128, num_global=4): block_sparse_attention over a ring cache of 132 slots.
Both providers run in this process, interleaved (dense, sparse, dense, sparse); the ratio is the
median over rounds within one run. "late tok/s" is the rate over the last quarter of the steps,
where the dense context is longest.
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, machine_str  # noqa: E402

import slimrt  # noqa: E402
from slimrt.runner import Runner  # noqa: E402


def model(max_pos: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=max_pos,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def run(rt: Runner, prompt: list[int], n: int) -> tuple[float, float, int]:
    """(overall decode tok/s, late tok/s over the last quarter, cache bytes)."""
    caches = []
    orig = rt.lean.new_cache
    rt.lean.new_cache = lambda b, m: caches.append(orig(b, m)) or caches[-1]
    try:
        stamps = []
        for _ in rt._token_loop([prompt], n, 0.0, None, None, None, False):
            stamps.append(time.perf_counter())
    finally:
        del rt.lean.new_cache
    first, last = stamps[0], stamps[-1]
    q = len(stamps) * 3 // 4
    return ((len(stamps) - 1) / (last - first), (len(stamps) - 1 - q) / (last - stamps[q]),
            caches[0].nbytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--new", type=int, default=None)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    n = args.new or (256 if args.quick else 2048)
    rounds = args.rounds or (1 if args.quick else 2)
    prompt = list(range(1, 33))
    dense = model(max_pos=len(prompt) + n)
    sparse = copy.deepcopy(dense)
    slimrt.compress(sparse, {"methods": ["sparse_attention"],
                             "params": {"sparse_attention": {"window": args.window, "num_global": args.sinks}}},
                    progress=False)
    rts = {"dense": Runner(dense), "sparse": Runner(sparse)}
    res: dict[str, list[tuple[float, float, int]]] = {k: [] for k in rts}
    for rt in rts.values():  # warm-up: first calls pay one-time costs (allocator, kernel dispatch)
        run(rt, prompt, 16)
    for _ in range(rounds):
        for name, rt in rts.items():
            res[name].append(run(rt, prompt, n))
    print(f"# sparse_attention decode: {machine_str(machine_info())}, torch threads {torch.get_num_threads()}")
    print(f"# Llama 256x4 GQA 8/2, prompt {len(prompt)}, {n} new tokens, window {args.window}, sinks {args.sinks}, "
          f"{rounds} round(s)")
    print(f"{'provider':8s} {'tok/s':>8s} {'late tok/s':>11s} {'KV cache bytes':>15s}")
    med = {}
    for name, rows in res.items():
        med[name] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows), rows[0][2])
        print(f"{name:8s} {med[name][0]:8.1f} {med[name][1]:11.1f} {med[name][2]:15,d}")
    ratios = [s[0] / d[0] for d, s in zip(res["dense"], res["sparse"])]
    late = [s[1] / d[1] for d, s in zip(res["dense"], res["sparse"])]
    print(f"sparse/dense tok/s: {statistics.median(ratios):.2f}x overall, {statistics.median(late):.2f}x late; "
          f"cache {med['dense'][2] / med['sparse'][2]:.1f}x smaller")


if __name__ == "__main__":
    main()
