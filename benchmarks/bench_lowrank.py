"""Fused low-rank linear vs dense and vs two torch matmuls, on transformer weight shapes.

For each (K, N) in {(768, 3072), (3072, 768), (4096, 4096)}, rank R in {k/8, k/4, k/2} with
k = min(K, N) (a rank above min(K, N) is no factorization) and rows M in
{1, 32, 512}, in one process with one thread count and the same inputs:
  torch_dense          F.linear(x, W)                      W (N, K) fp32, 2 M N K FLOPs
  torch_two            F.linear(F.linear(x, v), u)         2 M R (N + K) FLOPs, h written to memory
  slimrt_lowrank       slimrt.ops.lowrank_linear(x, u, v)  fused, factors as LowRankLinear stores them
  slimrt_lowrank_int8  LowRankLinear(quantized=True, w8a8): two int8 linears
Napkin bound: the FLOP ratio N K / (R (N + K)) is the most a rank-R factorization can gain over dense.
Targets: slimrt_lowrank >= 1.0x torch_two (median over rows) and, for M >= 32, speedup over dense
>= 80% of the FLOP ratio. Prints median ms, GFLOP/s and ratios; appends rows to the fixed-schema CSV
(benchmarks/common.py) and, with --results, writes its table into RESULTS.md.

    python benchmarks/bench_lowrank.py [--quick] [--threads N] [--clock wall|thread] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import slimrt
from slimrt.nn import LowRankLinear

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Csv, machine_info, machine_str, versions_str  # noqa: E402

START, END = "<!-- bench_lowrank:start -->", "<!-- bench_lowrank:end -->"


def write_section(path: str, start: str, end: str, text: str) -> None:
    """Replaces (or appends) one script's marked section of RESULTS.md, leaving the rest alone."""
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# slimrt results\n"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


def time_batched(fns: dict[str, Callable[[], object]], reps: int, min_sample_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each fn, providers interleaved round by round (as common.time_interleaved),
    but each sample repeats a call until min_sample_s so microsecond calls are measurable, and the clock is
    selectable: time.thread_time (with one thread) counts only this thread's CPU time, which stays steady on
    a shared machine where wall time includes being descheduled."""
    inner = {}
    for name, fn in fns.items():
        fn()  # warm up (allocations, page faults)
        t0 = clock()
        fn()
        one = max(clock() - t0, 1e-7)
        inner[name] = max(1, int(min_sample_s / one))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(inner[name]):
                fn()
            samples[name].append((clock() - t0) / inner[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="CI-size run: two shapes, one rank, fewer repetitions")
    ap.add_argument("--csv", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "lowrank.csv"))
    ap.add_argument("--results", default=None,
                    help="write the summary table into this markdown file (e.g. benchmarks/RESULTS.md), "
                         "replacing this script's previous section")
    ap.add_argument("--int8-max-gmac", type=float, default=None,
                    help="skip the int8-factor provider above this many GMAC per call (default: 0.3 quick, no limit)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall: perf_counter; thread: this thread's CPU time (needs --threads 1; for shared machines)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and torch.get_num_threads() != 1:
        ap.error("--clock thread measures one thread's CPU time; use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter

    shapes = [(768, 3072), (3072, 768)] if args.quick else [(768, 3072), (3072, 768), (4096, 4096)]
    rank_divs = [4] if args.quick else [8, 4, 2]
    ms = [1, 32, 512]
    reps, min_sample = (5, 0.005) if args.quick else (11, 0.02)
    int8_max = args.int8_max_gmac if args.int8_max_gmac is not None else (0.3 if args.quick else float("inf"))

    info = machine_info()
    mach = f"{machine_str(info)}, {'thread CPU time' if args.clock == 'thread' else 'wall time'}"
    print(f"# {mach} | {versions_str(info)} | {info['git_sha']} | {info['date']}")
    csv_out = Csv(args.csv, info)
    print(f"{'K':>5} {'N':>5} {'R':>5} {'M':>4} | {'dense ms':>9} {'two ms':>9} {'fused ms':>9} {'int8 ms':>9} | "
          f"{'GFLOP/s':>8} {'vs two':>7} {'vs dense':>8} {'FLOP bnd':>8} {'of bnd':>6} {'int8 vs dense':>13}")
    summary = []
    torch.manual_seed(0)
    with torch.inference_mode():
        for k, n in shapes:
            lin = torch.nn.Linear(k, n, bias=False)
            w = lin.weight
            for div in rank_divs:
                r = min(k, n) // div
                mod = LowRankLinear.from_linear(lin, rank=r)
                u_rm, v_rm = mod.u.contiguous(), mod.v.contiguous()  # row-major copies for torch
                qmod = LowRankLinear.from_linear(lin, rank=r, quantized=True)
                bound = n * k / (r * (n + k))
                for m in ms:
                    x = torch.randn(m, k)
                    fns = {
                        "torch_dense": lambda: F.linear(x, w),
                        "torch_two": lambda: F.linear(F.linear(x, v_rm), u_rm),
                        "slimrt_lowrank": lambda: slimrt.ops.lowrank_linear(x, mod.u, mod.v),
                    }
                    if m * r * (n + k) / 1e9 <= int8_max:
                        fns["slimrt_lowrank_int8"] = lambda: qmod(x)
                    t = time_batched(fns, reps, min_sample, clock)
                    y_two = fns["torch_two"]()
                    quality = {p: rel_err(fn(), y_two) for p, fn in fns.items() if p != "torch_dense"}
                    flops = {p: 2 * m * r * (n + k) for p in fns}
                    flops["torch_dense"] = 2 * m * n * k
                    for p, sec in t.items():
                        csv_out.row(kernel="lowrank_linear", provider=p, shape=f"M={m} K={k} N={n} R={r}",
                                    dtype="int8-factors" if p == "slimrt_lowrank_int8" else "float32",
                                    p50_ms=sec * 1e3, rate=f"{flops[p] / sec / 1e9:.2f} GFLOP/s",
                                    ratio=f"{t['torch_dense'] / sec:.3f}x vs torch_dense",
                                    quality="" if p == "torch_dense" else f"rel_err_vs_torch_two={quality[p]:.2e}")
                    i8 = t.get("slimrt_lowrank_int8")
                    s = {"K": k, "N": n, "R": r, "M": m, "dense": t["torch_dense"], "two": t["torch_two"],
                         "fused": t["slimrt_lowrank"], "int8": i8, "vs_two": t["torch_two"] / t["slimrt_lowrank"],
                         "vs_dense": t["torch_dense"] / t["slimrt_lowrank"], "bound": bound,
                         "gflops": flops["slimrt_lowrank"] / t["slimrt_lowrank"] / 1e9}
                    summary.append(s)
                    i8s = f"{i8 * 1e3:9.3f}" if i8 else f"{'skip':>9}"
                    i8r = f"{t['torch_dense'] / i8:12.2f}x" if i8 else ""
                    print(f"{k:5d} {n:5d} {r:5d} {m:4d} | {s['dense'] * 1e3:9.3f} {s['two'] * 1e3:9.3f} "
                          f"{s['fused'] * 1e3:9.3f} {i8s} | {s['gflops']:8.1f} {s['vs_two']:6.2f}x "
                          f"{s['vs_dense']:7.2f}x {bound:7.2f}x {s['vs_dense'] / bound:5.0%} {i8r}", flush=True)

    med_two = statistics.median(s["vs_two"] for s in summary)
    big = [s for s in summary if s["M"] >= 32]
    met = sum(s["vs_dense"] >= 0.8 * s["bound"] for s in big)
    verdict = (f"median fused/two-matmul speedup {med_two:.2f}x (target >= 1.0x); "
               f"speedup over dense >= 80% of the FLOP ratio in {met}/{len(big)} cases with M >= 32")
    print(verdict)
    print(f"appended to {args.csv}")
    if args.results:
        lines = [f"### lowrank_linear (benchmarks/bench_lowrank.py{' --quick' if args.quick else ''})", "",
                 f"{mach}; {versions_str(info)}; git {info['git_sha']}; {info['date']}. fp32; dense and two = "
                 "torch F.linear; fused = slimrt.ops.lowrank_linear on the factors as LowRankLinear stores them; "
                 "int8 = LowRankLinear(quantized=True, w8a8).", "",
                 "| K | N | R | M | dense ms | two matmuls ms | fused ms | int8 factors ms | fused GFLOP/s | "
                 "fused vs two | fused vs dense | FLOP ratio | of bound |", "|" + "---|" * 13]
        for s in summary:
            i8 = f"{s['int8'] * 1e3:.3f}" if s["int8"] else "skipped"
            lines.append(f"| {s['K']} | {s['N']} | {s['R']} | {s['M']} | {s['dense'] * 1e3:.3f} | "
                         f"{s['two'] * 1e3:.3f} | {s['fused'] * 1e3:.3f} | {i8} | {s['gflops']:.1f} | "
                         f"{s['vs_two']:.2f}x | {s['vs_dense']:.2f}x | {s['bound']:.2f}x | "
                         f"{s['vs_dense'] / s['bound']:.0%} |")
        lines += ["", verdict, ""]
        write_section(args.results, START, END, "\n".join(lines))
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
