"""Block-sparse attention vs PyTorch SDPA with the equivalent dense boolean mask.

Prefill (Lq = L) and single-token decode (Lq = 1 over an L-long cache), B = 1, Hq = 8,
Hkv in {8, 2}, D = 64, fp32, densities 100% (full), 50% (causal; for decode a window of L/2) and
10% (causal sliding window of L/10). Both run in this process on the same inputs and thread count;
the ratio is SDPA time / slimrt time (> 1: slimrt faster). SDPA always does the dense L x L work,
so the 10% rows measure how much skipping blocks buys; the 100% rows measure the kernel itself.
Rate = useful GFLOP/s = 4 * Hq * allowed_pairs * D / time.

    python benchmarks/bench_attention.py [--quick] [--reps N] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import slimrt
from slimrt.attention import causal_mask, full_mask, sliding_window_mask

HQ, D, BLOCK = 8, 64, 64


def timeit(fn, reps: int) -> float:
    """Median wall time of fn() in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads, isa={slimrt.info()['isa']}"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


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
        t_sdpa = timeit(sdpa, reps)
        t_ours = timeit(ours, reps)
    flop = 4 * HQ * pairs * D
    return {"mode": mode, "hkv": hkv, "L": length, "density": density, "real_density": pairs / (lq * length),
            "sdpa_ms": t_sdpa, "slimrt_ms": t_ours, "ratio": t_sdpa / t_ours,
            "slimrt_gflops": flop / t_ours / 1e6, "max_abs_diff": err}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="L in {512, 2048} and fewer repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--csv", default=None, help="also write rows to this CSV file")
    args = ap.parse_args(argv)
    lengths = [512, 2048] if args.quick else [512, 2048, 8192]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    print(f"# bench_attention  {date}  git {git_sha()}  torch {torch.__version__}")
    print(f"# {info}")
    print("| mode | Hkv | L | density (token) | SDPA ms | slimrt ms | speedup | slimrt GFLOP/s | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for mode in ("prefill", "decode"):
        for hkv in (8, 2):
            for length in lengths:
                for density in (100, 50, 10):
                    reps = args.reps or (3 if args.quick else (2 if mode == "prefill" and length >= 8192 else 5))
                    if mode == "decode":
                        reps *= 10
                    r = run_case(mode, hkv, length, density, reps)
                    rows.append(r)
                    print(f"| {mode} | {hkv} | {length} | {density}% ({r['real_density']:.0%}) | {r['sdpa_ms']:.3f} "
                          f"| {r['slimrt_ms']:.3f} | {r['ratio']:.2f}x | {r['slimrt_gflops']:.1f} "
                          f"| {r['max_abs_diff']:.1e} |", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["kernel", "provider", "shape", "dtype", "p50_ms", "rate", "ratio",
                                              "quality", "machine", "versions", "git_sha", "date"])
            w.writeheader()
            for r in rows:
                shape = f"{r['mode']} B=1 Hq={HQ} Hkv={r['hkv']} L={r['L']} D={D} density={r['density']}%"
                for prov, ms in (("torch_sdpa", r["sdpa_ms"]), ("slimrt", r["slimrt_ms"])):
                    w.writerow({"kernel": "block_sparse_attention", "provider": prov, "shape": shape,
                                "dtype": "float32", "p50_ms": f"{ms:.4f}",
                                "rate": f"{4 * HQ * r['real_density'] * (r['L'] if r['mode'] == 'prefill' else 1) * r['L'] * D / ms / 1e6:.2f} GFLOP/s",
                                "ratio": f"{r['sdpa_ms'] / ms:.3f}", "quality": f"max_abs_diff={r['max_abs_diff']:.2e}",
                                "machine": info, "versions": f"torch {torch.__version__}, slimrt {slimrt.__version__}",
                                "git_sha": git_sha(), "date": date})
    bad = [r for r in rows if r["max_abs_diff"] > 1e-3]
    if bad:
        print(f"ERROR: slimrt and SDPA disagree on {len(bad)} cases", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
