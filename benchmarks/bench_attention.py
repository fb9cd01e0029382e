"""Block-sparse attention vs PyTorch SDPA with the equivalent dense boolean mask.

Prefill (Lq = L) and single-token decode (Lq = 1 over an L-long cache), B = 1, Hq = 8,
Hkv in {8, 2}, D = 64, fp32, densities 100% (full), 50% (causal; for decode a window of L/2) and
10% (causal sliding window of L/10). Both run in this process on the same inputs and thread count;
the ratio is SDPA time / slimrt time (> 1: slimrt faster). SDPA always does the dense L x L work,
so the 10% rows measure how much skipping blocks buys; the 100% rows measure the kernel itself.
Rate = useful GFLOP/s = 4 * Hq * allowed_pairs * D / time.

    python benchmarks/bench_attention.py [--quick] [--reps N] [--threads N] [--csv out.csv]
    slimrt bench attention --quick
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import slimrt
from slimrt.attention import causal_mask, full_mask, sliding_window_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, time_fn, time_interleaved  # noqa: E402

HQ, D, BLOCK = 8, 64, 64


def make_mask(mode: str, density: int, length: int):
    lq = length if mode == "prefill" else 1
    if density == 100:
        return full_mask(lq, length, BLOCK)
    if density == 50:
        if mode == "prefill":
            return causal_mask(lq, length, BLOCK)
        return sliding_window_mask(lq, length, length // 2, block_size=BLOCK)
    return sliding_window_mask(lq, length, length // 10, block_size=BLOCK)


def run_case(mode: str, hkv: int, length: int, density: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    lq = length if mode == "prefill" else 1
    q = torch.randn(1, HQ, lq, D, generator=g)
    k = torch.randn(1, hkv, length, D, generator=g)
    v = torch.randn(1, hkv, length, D, generator=g)
    mask = make_mask(mode, density, length)
    dense = mask.to_dense(lq, length)  # (1, 1, Lq, Lk) bool, what SDPA gets
    pairs = int(dense.sum())
    gqa = {"enable_gqa": True} if hkv != HQ else {}

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, **gqa)

    def ours():
        return slimrt.ops.block_sparse_attention(q, k, v, mask)

    with torch.inference_mode():
        err = (sdpa() - ours()).abs().max().item()
        if mode == "prefill":  # round-robin: noise on a shared machine hits both providers alike
            t = time_interleaved({"sdpa": sdpa, "slimrt": ours}, warmup=1, reps=reps, max_s=10.0)
        else:
            # Decode calls take microseconds: alternating providers lets each one's idle worker
            # threads fall asleep between its calls, so each call would time a thread wake-up
            # (tens of ms on an overloaded machine). Each provider runs back to back instead.
            t = {"sdpa": time_fn(sdpa, warmup=3, reps=reps), "slimrt": time_fn(ours, warmup=3, reps=reps)}
    flop = 4 * HQ * pairs * D  # QK^T and PV over the allowed pairs only
    return {"mode": mode, "hkv": hkv, "L": length, "lq": lq, "density": density, "real_density": pairs / (lq * length),
            "sdpa_ms": t["sdpa"], "slimrt_ms": t["slimrt"], "ratio": t["sdpa"] / t["slimrt"],
            "flop": flop, "max_abs_diff": err}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="L in {512, 2048} and fewer repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both providers")
    ap.add_argument("--csv", default=None, help="append rows to this CSV (default benchmarks/out/attention.csv)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [512, 2048] if args.quick else [512, 2048, 8192]
    info = machine_info()
    print(f"bench_attention  {info['date']}  git {info['git_sha']}  torch {info['torch']}")
    print(machine_str(info), flush=True)
    csv = Csv(args.csv or Path(__file__).resolve().parent / "out" / "attention.csv", info)
    header = ["mode", "Hkv", "L", "density (token)", "SDPA ms", "slimrt ms", "speedup", "slimrt GFLOP/s",
              "max abs diff"]
    rows, table = [], []
    for mode in ("prefill", "decode"):
        for hkv in (8, 2):
            for length in lengths:
                for density in (100, 50, 10):
                    reps = args.reps or (3 if args.quick else (2 if mode == "prefill" and length >= 8192 else 5))
                    if mode == "decode":
                        reps *= 10
                    r = run_case(mode, hkv, length, density, reps)
                    rows.append(r)
                    table.append([mode, hkv, length, f"{density}% ({r['real_density']:.0%})", f"{r['sdpa_ms']:.3f}",
                                  f"{r['slimrt_ms']:.3f}", f"{r['ratio']:.2f}x",
                                  f"{r['flop'] / r['slimrt_ms'] / 1e6:.1f}", f"{r['max_abs_diff']:.1e}"])
                    print(" | ".join(str(c) for c in table[-1]), flush=True)
                    shape = f"{mode} B=1 Hq={HQ} Hkv={hkv} L={length} D={D} density={density}%"
                    for prov, ms in (("torch_sdpa", r["sdpa_ms"]), ("slimrt", r["slimrt_ms"])):
                        csv.row(kernel="block_sparse_attention", provider=prov, shape=shape, dtype="float32",
                                p50_ms=ms, rate=f"{r['flop'] / ms / 1e6:.2f} GFLOP/s", ratio=r["sdpa_ms"] / ms,
                                quality=f"max_abs_diff={r['max_abs_diff']:.2e}")
    print()
    print(markdown_table(header, table))
    bad = [r for r in rows if r["max_abs_diff"] > 1e-3]
    if bad:
        print(f"ERROR: slimrt and SDPA disagree on {len(bad)} cases", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
