"""slimrt's Triton GPU kernels against cuBLAS / cuDNN-backed PyTorch on LLM shapes.

Sections (all in one process, same inputs, timings by triton.testing.do_bench, median ms):
  int8 GEMM   weights K x N in {4096 x 4096, 4096 x 14336, 14336 x 4096}, M in {1, 16, 128, 2048}:
              slimrt int8_gemm (int8 x int8 -> bf16 with the fused dequant epilogue), slimrt int8_linear
              (bf16 x in, per-token quantization included), slimrt int8_weight_only_linear (bf16 x int8 w),
              torch._int_mm (int32 out, cuBLASLt; needs M > 16), bf16 and fp16 x @ w.T (cuBLAS).
  low-rank    K = N = 4096, rank 256 (fused, h on chip) and 512 (two launches), M in {1, 16, 2048}:
              slimrt lowrank_linear vs two bf16 matmuls and the dense bf16 matmul it replaces.
  attention   B = 1, Hq = 32, Hkv = 8, D = 128, bf16, L in {4096, 16384}, density 10% (causal sliding
              window of L/10) and 50% (causal), prefill (Lq = L) and decode (Lq = 1):
              slimrt block_sparse_attention vs SDPA dense (no mask: flash, all L x L pairs), SDPA with
              the equivalent boolean mask, SDPA is_causal (the flash baseline for the 50% rows) and
              FlexAttention with the same block mask (compiled; skipped when the time budget runs out).
Rates: TFLOP/s of the work each provider actually does (dense baselines do all pairs / the full
GEMM); `useful` TFLOP/s counts only the allowed pairs / the compressed math. ratio = baseline time /
slimrt time (> 1: slimrt faster). Napkin bounds for an H200: ~989 TFLOP/s bf16 dense, ~1979 TOP/s
int8, ~4.8 TB/s HBM; the decode rows are bandwidth-bound, so GB/s is printed for them.

    python benchmarks/bench_gpu.py [--quick] [--reps N] [--csv out.csv] [--no-flex] [--budget-s 150]
    slimrt bench gpu [--quick] [--reps N]

Needs a CUDA GPU and triton: without a GPU it says so and exits 0 (nothing to measure, so that
`slimrt bench all` works on CPU machines); with a GPU but without Triton serving it, it exits 2.
Finishes in under 3 minutes on an H100/H200 (autotuning included; --quick drops the largest shapes).
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import csv
import datetime
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEV = "cuda"
# Problem sizes; --quick trims them, --smoke (a CPU check of this script) shrinks them to toy size.
SIZES = {"gemm_kn": [(4096, 4096), (4096, 14336), (14336, 4096)], "gemm_m": [1, 16, 128, 2048],
         "lowrank_kn": 4096, "lowrank_r": [256, 512], "lowrank_m": [1, 16, 2048],
         "attn_l": [4096, 16384], "attn_heads": (32, 8, 128, 128)}  # Hq, Hkv, D, block size
SMOKE_SIZES = {"gemm_kn": [(64, 48)], "gemm_m": [1, 20], "lowrank_kn": 64, "lowrank_r": [16, 300], "lowrank_m": [1, 20],
               "attn_l": [64], "attn_heads": (4, 2, 16, 16)}


@dataclass
class Row:
    section: str
    shape: str
    provider: str
    ms: float | None
    flops: float  # work this provider does
    useful_flops: float  # work the compressed op needs
    bytes_moved: float = 0.0
    quality: str = ""


REPS: int | None = None  # --reps: exactly this many timed calls per measurement instead of do_bench's 40 ms


def bench(fn: Callable[[], object]) -> float | None:
    import triton.testing

    try:
        if DEV != "cuda":  # --smoke: one timed call, only to run every line of this script
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        if REPS:
            for _ in range(3):
                fn()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
            for start, end in events:
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            return float(statistics.median(s.elapsed_time(e) for s, e in events))
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    except Exception as e:  # an unsupported baseline (e.g. _int_mm's shape limits) is reported, not fatal
        print(f"    ({type(e).__name__}: {str(e).splitlines()[0][:100]})", file=sys.stderr)
        return None


def rel_err(got: torch.Tensor, want: torch.Tensor) -> str:
    num = (got.float() - want.float()).norm().item()
    den = want.float().norm().item() or 1.0
    return f"rel_err={num / den:.1e}"


# ---- int8 GEMM --------------------------------------------------------------------------------------

def int8_section(quick: bool) -> list[Row]:
    import slimrt
    from slimrt.ops import reference as R

    rows: list[Row] = []
    shapes = SIZES["gemm_kn"]  # (K, N): in_features x out_features
    ms_list = SIZES["gemm_m"][:3] if quick else SIZES["gemm_m"]
    for k, n in shapes:
        w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / k**0.5
        w_q, w_s = R.quantize_per_channel(w)
        w16 = w.half()
        for m in ms_list:
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            x_q, x_s = slimrt.ops.quantize_per_token(x)
            shape = f"M={m} K={k} N={n}"
            flops = 2.0 * m * n * k
            wbytes = n * k  # int8 weight bytes; bf16 is twice that
            ref = x @ w.T
            y_lin = slimrt.ops.int8_linear(x, w_q, w_s)
            y_wo = slimrt.ops.int8_weight_only_linear(x, w_q, w_s)
            rows += [
                Row("int8_gemm", shape, "slimrt int8_gemm (bf16 out)",
                    bench(lambda: slimrt.ops.int8_gemm(x_q, w_q, x_s, w_s, torch.bfloat16)), flops, flops, wbytes),
                Row("int8_gemm", shape, "slimrt int8_linear (W8A8)", bench(lambda: slimrt.ops.int8_linear(x, w_q, w_s)),
                    flops, flops, wbytes, rel_err(y_lin, ref)),
                Row("int8_gemm", shape, "slimrt weight-only int8",
                    bench(lambda: slimrt.ops.int8_weight_only_linear(x, w_q, w_s)), flops, flops, wbytes,
                    rel_err(y_wo, ref)),
                Row("int8_gemm", shape, "torch._int_mm (int32 out)",
                    bench(lambda: torch._int_mm(x_q, w_q.T)), flops, flops, wbytes),
                Row("int8_gemm", shape, "cuBLAS bf16", bench(lambda: x @ w.T), flops, flops, 2 * wbytes),
                Row("int8_gemm", shape, "cuBLAS fp16", bench(lambda: x.half() @ w16.T), flops, flops, 2 * wbytes),
            ]
            del x, x_q, x_s
        del w, w_q, w16
        torch.cuda.empty_cache()
    return rows


# ---- low-rank ---------------------------------------------------------------------------------------

def lowrank_section(quick: bool) -> list[Row]:
    import slimrt

    rows: list[Row] = []
    k = n = SIZES["lowrank_kn"]
    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / k**0.5
    for r in SIZES["lowrank_r"]:
        u = (torch.randn(n, r, device=DEV) / r**0.5).bfloat16()
        v = (torch.randn(r, k, device=DEV) / k**0.5).bfloat16()
        for m in (SIZES["lowrank_m"][:2] if quick else SIZES["lowrank_m"]):
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            shape = f"M={m} K={k} N={n} R={r}"
            lr_flops = 2.0 * m * r * (k + n)
            dense_flops = 2.0 * m * n * k
            ref = (x.float() @ v.float().T) @ u.float().T
            y = slimrt.ops.lowrank_linear(x, u, v)
            rows += [
                Row("lowrank", shape, f"slimrt lowrank_linear ({'fused' if r <= 256 else 'two launches'})",
                    bench(lambda: slimrt.ops.lowrank_linear(x, u, v)), lr_flops, lr_flops, 2 * r * (k + n),
                    rel_err(y, ref)),
                Row("lowrank", shape, "torch (x @ v.T) @ u.T bf16", bench(lambda: (x @ v.T) @ u.T), lr_flops, lr_flops,
                    2 * r * (k + n), rel_err((x @ v.T) @ u.T, ref)),
                Row("lowrank", shape, "dense bf16 x @ W.T", bench(lambda: x @ w.T), dense_flops, lr_flops, 2 * n * k),
            ]
    return rows


# ---- block-sparse attention ---------------------------------------------------------------------------

def attention_section(quick: bool, flex: bool, deadline: float) -> list[Row]:
    import slimrt
    from slimrt.attention import causal_mask, sliding_window_mask

    rows: list[Row] = []
    hq, hkv, d, bs = SIZES["attn_heads"]
    flex_fn = None
    if flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            flex_fn = torch.compile(flex_attention, dynamic=False)
        except Exception as e:  # older torch
            print(f"    (FlexAttention unavailable: {e})", file=sys.stderr)
    for L in (SIZES["attn_l"][:1] if quick else SIZES["attn_l"]):
        for density in (0.1, 0.5):
            window = max(1, int(L * density)) if density < 0.5 else 0
            for lq in (L, 1):
                cpu_mask = (sliding_window_mask(lq, L, window, block_size=bs) if window else causal_mask(lq, L, bs))
                gm = slimrt.BlockMask(cpu_mask.kv_num_blocks.to(DEV), cpu_mask.kv_indices.to(DEV), bs, causal=True,
                                      window=window, seq_lengths=(lq, L))
                allowed = gm.to_dense(lq, L)  # (1, 1, Lq, L) bool, built on the GPU
                pairs = float(allowed.sum())
                q = torch.randn(1, hq, lq, d, device=DEV, dtype=torch.bfloat16)
                kk = torch.randn(1, hkv, L, d, device=DEV, dtype=torch.bfloat16)
                vv = torch.randn(1, hkv, L, d, device=DEV, dtype=torch.bfloat16)
                # SDPA baselines get K/V expanded to Hq heads: its masked (memory-efficient) path has no GQA.
                ke, ve = kk.repeat_interleave(hq // hkv, 1), vv.repeat_interleave(hq // hkv, 1)
                shape = f"{'prefill' if lq > 1 else 'decode'} L={L} density={int(density * 100)}%"
                useful = 4.0 * hq * pairs * d
                dense = 4.0 * hq * lq * L * d
                kv_bytes = 2.0 * 2 * hkv * L * d  # K and V, bf16, read once
                out = slimrt.ops.block_sparse_attention(q, kk, vv, gm)
                ref = F.scaled_dot_product_attention(q, ke, ve, attn_mask=allowed)
                rows += [
                    Row("attention", shape, "slimrt block_sparse_attention",
                        bench(lambda: slimrt.ops.block_sparse_attention(q, kk, vv, gm)), useful, useful, kv_bytes,
                        rel_err(out, ref)),
                    Row("attention", shape, "SDPA dense (no mask)",
                        bench(lambda: F.scaled_dot_product_attention(q, ke, ve)), dense, useful,
                        kv_bytes),
                    Row("attention", shape, "SDPA boolean mask",
                        bench(lambda: F.scaled_dot_product_attention(q, ke, ve, attn_mask=allowed)),
                        dense, useful, kv_bytes),
                ]
                if window == 0 and lq == L:
                    rows.append(Row("attention", shape, "SDPA is_causal (flash)",
                                    bench(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True)),
                                    useful, useful, kv_bytes))
                if flex_fn is not None and time.monotonic() < deadline:
                    off = L - lq

                    def mask_mod(b, h, qi, kj, off=off, window=window):
                        p = qi + off
                        ok = kj <= p
                        return ok & (p - kj < window) if window else ok

                    try:
                        fbm = create_block_mask(mask_mod, None, None, lq, L, device=DEV, BLOCK_SIZE=bs)
                        rows.append(Row("attention", shape, "FlexAttention (compiled)",
                                        bench(lambda: flex_fn(q, kk, vv, block_mask=fbm, enable_gqa=True)),
                                        useful, useful, kv_bytes))
                    except Exception as e:
                        print(f"    (FlexAttention failed at {shape}: {str(e).splitlines()[0][:100]})", file=sys.stderr)
                elif flex_fn is not None:
                    print(f"    (FlexAttention skipped at {shape}: time budget)", file=sys.stderr)
                del q, kk, vv, ke, ve, allowed
                torch.cuda.empty_cache()
    return rows


# ---- report -------------------------------------------------------------------------------------------

def report(rows: list[Row]) -> list[dict]:
    """One table: per shape, each provider's ms, TFLOP/s, useful TFLOP/s, GB/s and the ratios to slimrt."""
    out = []
    hdr = (f"{'section':10} {'shape':34} {'provider':36} {'ms':>9} {'TFLOP/s':>8} {'useful':>8} {'GB/s':>7}  "
           f"{'vs slimrt':>9}  quality")
    print(hdr)
    print("-" * len(hdr))
    for key in dict.fromkeys((r.section, r.shape) for r in rows):
        group = [r for r in rows if (r.section, r.shape) == key]
        ours = next((r for r in group if r.provider.startswith("slimrt") and r.ms), None)
        for r in group:
            tf = r.flops / r.ms / 1e9 if r.ms else float("nan")
            useful = r.useful_flops / r.ms / 1e9 if r.ms else float("nan")
            gbs = r.bytes_moved / r.ms / 1e6 if r.ms and r.bytes_moved else float("nan")
            ratio = r.ms / ours.ms if r.ms and ours else float("nan")
            ms = f"{r.ms:9.4f}" if r.ms else f"{'n/a':>9}"
            print(f"{r.section:10} {r.shape:34} {r.provider:36} {ms} {tf:8.1f} {useful:8.1f} {gbs:7.0f}  "
                  f"{ratio:8.2f}x  {r.quality}")
            out.append({"kernel": r.section, "provider": r.provider, "shape": r.shape, "dtype": "bf16/int8",
                        "p50_ms": r.ms, "rate": round(useful, 2) if r.ms else None,
                        "ratio": round(ratio, 3) if ratio == ratio else None, "quality": r.quality})
        print()
    print("ratio column: provider time / first slimrt row of the shape (> 1: slimrt faster)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(p)
    p.add_argument("--quick", action="store_true", help="drop M = 2048, L = 16384 (CI-size run)")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes ~10-30 s per shape)")
    p.add_argument("--budget-s", type=float, default=150.0, help="stop starting FlexAttention compiles after this")
    p.add_argument("--csv", type=Path, help="also write the rows as CSV")
    p.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default: do_bench, 40 ms)")
    p.add_argument("--smoke", action="store_true",
                   help="toy sizes on CPU tensors to check this script (needs SLIMRT_BACKEND=triton "
                        "TRITON_INTERPRET=1); its timings mean nothing")
    args = p.parse_args(argv)

    global DEV, SIZES, REPS
    REPS = args.reps
    if args.smoke:
        DEV, SIZES, args.no_flex = "cpu", SMOKE_SIZES, True
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device found; this benchmark times the Triton GPU kernels and needs an NVIDIA "
              "GPU (the CPU kernels are benchmarked by the other bench_*.py scripts); skipped", file=sys.stderr)
        return 0
    import slimrt

    if slimrt.ops.backend()["cpu" if args.smoke else "cuda"] != "triton":
        print(f"bench_gpu: CUDA ops are not served by Triton ({slimrt.ops.backend()}); install triton "
              "(`pip install triton`) and unset SLIMRT_BACKEND", file=sys.stderr)
        return 2
    start = time.monotonic()
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (smoke run: Triton interpreter)"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT).stdout.strip()
    except OSError:
        sha = "unknown"
    import triton

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {dev}, torch {torch.__version__}, triton {triton.__version__}, slimrt {slimrt.__version__} ({sha}), "
          f"{stamp}")
    rows: list[Row] = []
    with torch.inference_mode():
        for name, fn in (("int8 GEMM", lambda: int8_section(args.quick)),
                         ("low-rank", lambda: lowrank_section(args.quick)),
                         ("attention", lambda: attention_section(args.quick, not args.no_flex,
                                                                 start + args.budget_s))):
            t0 = time.monotonic()
            print(f"... {name}", file=sys.stderr, flush=True)
            rows += fn()
            print(f"    {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    table = report(rows)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=[*table[0], "machine", "versions", "git_sha", "date"])
            wr.writeheader()
            for r in table:
                wr.writerow({**r, "machine": dev, "versions": f"torch {torch.__version__} triton {triton.__version__}",
                             "git_sha": sha, "date": stamp})
    print(f"total {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
