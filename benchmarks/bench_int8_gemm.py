"""int8 GEMM benchmark: slimrt W8A8 and weight-only linear against PyTorch's dense and int8 paths.

Providers, all on the same inputs and thread count, timed round-robin per shape:
  torch_fp32   F.linear fp32                      torch_bf16  F.linear bf16
  torch_int_mm torch._int_mm (raw int8 GEMM, int32 out, no quantization)
  torch_dq     torch.ao quantize_dynamic nn.Linear (fbgemm/onednn W8A8, per-tensor weight)
  slimrt_gemm  slimrt int8 GEMM kernel alone (prepacked weight, int32 out): the raw-kernel peer of _int_mm
  slimrt_w8a8  Int8Linear(mode="w8a8"): per-token activation quantization + int8 GEMM + epilogue
  slimrt_w8    Int8Linear(mode="w8"): float activations x int8 weight dequantized in registers
  slimrt_w8a8_vnni  (CPUs with AMX only) slimrt_w8a8 with AMX switched off: the AVX-512 VNNI kernel

Rates: GOP/s = 2*M*N*K / t; GB/s = bytes of weight read / t (the decode bound). Bounds come from the
probes in the extension, measured in this run: int8 peak (register-only vpdpbusd loop) and memory
read bandwidth (stream over a buffer larger than L3). Where the CPU has AMX, slimrt's int8 GEMM runs
on AMX tiles from M = 8, which goes past the VNNI peak: the run then also measures the AMX peak
(register-only tdpbusd loop) and reports the AMX kernel against it, and the VNNI kernel alone.

--plot PNG draws the results as a roofline (slimrt.charts, needs matplotlib): achieved GOP/s of each
int8 provider against arithmetic intensity, 2MNK / (MK + NK + 4MN) ops per byte (int8 A and B,
32-bit C: what an int8 GEMM must at least move), under min(int8 peak, read bandwidth x intensity)
with the bounds measured in the same run.

    python benchmarks/bench_int8_gemm.py [--quick] [--csv PATH] [--md PATH] [--plot PNG]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, time_interleaved, versions_str  # noqa: E402

M_GRID = (1, 8, 32, 128, 512)
KN_GRID = ((384, 1536), (1536, 384), (768, 768), (4096, 4096), (4096, 11008))
QUICK = [(m, k, n) for m in (1, 128) for (k, n) in ((384, 1536), (1536, 384), (4096, 4096))] + [(1, 4096, 11008)]
PROVIDERS = ("torch_fp32", "torch_bf16", "torch_int_mm", "torch_dq", "slimrt_gemm", "slimrt_w8a8", "slimrt_w8",
             "slimrt_w4")
W4_GROUP = 32  # the w4 preset's group size


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.float(), got.float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum().clamp_min(1e-30)))


def providers() -> tuple[str, ...]:
    from slimrt import _native

    return PROVIDERS + (("slimrt_w8a8_vnni",) if _native.load().amx_active() else ())


def bench_shape(m: int, k: int, n: int, reps: int) -> dict[str, dict[str, float]]:
    """Returns {provider: {"ms": p50, "sqnr": dB or nan}} for one (M, K, N)."""
    from slimrt import _native
    from slimrt.nn import Int8Linear, W4Linear

    ext = _native.load()
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=False)
    x = torch.randn(m, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        dq = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    w32, w16, xb = lin.weight.detach(), lin.weight.detach().bfloat16(), x.bfloat16()
    # One copy of the int8 weight per slimrt provider, as every torch provider has its own: run back to
    # back in a round, providers sharing one packed weight would each find it warm in L3 from the one
    # before (the M = 1 weight-only figure read 108-149% of DRAM bandwidth that way).
    q8 = Int8Linear.from_linear(lin, mode="w8a8")
    q8_w8 = Int8Linear.from_linear(lin, mode="w8")
    q8_gemm = Int8Linear.from_linear(lin, mode="w8a8")
    q4 = W4Linear.from_linear(lin, group_size=W4_GROUP)  # int4 codes + fp16 scale + u8 zero per group
    a_i8 = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    out_i32 = torch.empty(m, n, dtype=torch.int32)
    nt = torch.get_num_threads()
    wq_ptr, wp_ptr = q8_gemm.w_q.data_ptr(), q8_gemm.w_packed.data_ptr()

    def slimrt_gemm() -> None:  # the kernel alone: prepacked weight, int32 out, no Python op layer
        ext.int8_gemm(a_i8.data_ptr(), k, wq_ptr, k, wp_ptr, 0, 0, 0, out_i32.data_ptr(), 2, n, m, n, k, nt)

    fns = {
        "torch_fp32": lambda: F.linear(x, w32),
        "torch_bf16": lambda: F.linear(xb, w16),
        "torch_int_mm": lambda: torch._int_mm(a_i8, q8.w_q.t()),
        "torch_dq": lambda: dq(x),
        "slimrt_gemm": slimrt_gemm,
        "slimrt_w8a8": lambda: q8(x),
        "slimrt_w8": lambda: q8_w8(x),
        "slimrt_w4": lambda: q4(x),
    }
    if "slimrt_w8a8_vnni" in providers():
        q8_vnni = Int8Linear.from_linear(lin, mode="w8a8")

        def vnni() -> None:
            ext.set_amx(False)
            try:
                q8_vnni(x)
            finally:
                ext.set_amx(True)

        fns["slimrt_w8a8_vnni"] = vnni
    with torch.inference_mode():
        ms = time_interleaved(fns, reps=reps)
        ref = F.linear(x, w32)
        quality = {"torch_bf16": sqnr_db(ref, fns["torch_bf16"]()), "torch_dq": sqnr_db(ref, dq(x)),
                   "slimrt_w8a8": sqnr_db(ref, q8(x)), "slimrt_w8": sqnr_db(ref, q8_w8(x)),
                   "slimrt_w4": sqnr_db(ref, q4(x))}
    out = {p: {"ms": ms[p], "sqnr": quality.get(p, float("nan"))} for p in providers()}
    out["slimrt_w4"]["bytes"] = q4.w_packed.numel()  # what the kernel streams per call
    return out


def per_call_overhead(k: int = 64, n: int = 64) -> list[list[str]]:
    """Per-call cost (us) of each layer on a tiny decode shape, where the math is negligible."""
    from slimrt import _native, ops
    from slimrt.nn import Int8Linear
    from slimrt.ops import cpu

    ext = _native.load()
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n)
    mod = Int8Linear.from_linear(lin)
    x = torch.randn(1, k)
    out = torch.empty(1, n)
    nt = torch.get_num_threads()
    w_q, w_s, b, wp = mod.w_q, mod.w_scale, mod.bias, mod.w_packed
    layers = {
        "F.linear fp32 (reference point)": lambda: F.linear(x, lin.weight, lin.bias),
        "Int8Linear.forward (w8a8)": lambda: mod(x),
        "torch.ops.slimrt.int8_linear (dispatcher)": lambda: ops.int8_linear(x, w_q, w_s, b, wp),
        "ops.cpu.int8_linear (checks + alloc, no dispatcher)": lambda: cpu.int8_linear(x, w_q, w_s, b, wp),
        "_C.int8_w8a8_linear (kernel only)": lambda: ext.int8_w8a8_linear(
            x.data_ptr(), 0, k, w_q.data_ptr(), k, wp.data_ptr(), w_s.data_ptr(), b.data_ptr(), out.data_ptr(), 0, n,
            1, n, k, nt),
        "Int8Linear.forward (w8)": lambda: mod(x, mode="w8"),
        "_C.int8_w8_linear (kernel only)": lambda: ext.int8_w8_linear(
            x.data_ptr(), 0, k, w_q.data_ptr(), k, wp.data_ptr(), w_s.data_ptr(), b.data_ptr(), out.data_ptr(), 0, n,
            1, n, k, nt),
    }

    def many(fn, count=200):
        def run() -> None:
            for _ in range(count):
                fn()
        return run

    with torch.inference_mode():
        ms = time_interleaved({name: many(fn) for name, fn in layers.items()}, reps=15, stat="min")
    return [[name, f"{ms[name] * 1e3 / 200:.2f}"] for name in layers]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="CI-size grid")
    ap.add_argument("--reps", type=int, default=15, help="timed rounds per shape (default 15)")
    ap.add_argument("--shapes", default=None,
                    help="only these shapes, 'M,K,N;M,K,N' (e.g. the M >= 128 targets: "
                         "'128,4096,4096;512,4096,4096;128,4096,11008;512,4096,11008')")
    ap.add_argument("--csv", default=str(Path(__file__).resolve().parent / "out" / "int8_gemm.csv"))
    ap.add_argument("--md", default=None, help="also write the markdown summary to this file")
    ap.add_argument("--plot", default=None, metavar="PNG", help="also draw the roofline chart into this PNG (matplotlib)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for every provider (default: torch's); 1 gives steadier ratios on a "
                         "loaded machine, where a descheduled OpenMP thread stalls a whole parallel region")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:
        from slimrt.charts import pyplot

        pyplot()  # a missing matplotlib fails now, not after the whole grid

    from slimrt import _native

    ext = _native.load()
    info = machine_info()
    nt = torch.get_num_threads()
    print(f"machine: {machine_str(info)}\nversions: {versions_str(info)}  git {info['git_sha']}  {info['date']}")
    amx = bool(ext.amx_active())
    provs = providers()

    def probes() -> tuple[float, float, float]:
        pk = ext.probe_int8_peak(nt, 0.3) if ext.active_isa() == "avx512" else float("nan")
        amx_pk = ext.probe_amx_peak(nt, 0.3) if amx else float("nan")
        return pk, ext.probe_read_bandwidth(256 << 20, nt, 5), amx_pk

    peak, bw, amx_peak = probes()
    print(f"bounds: int8 peak {peak / 1e9:.0f} GOP/s (vpdpbusd loop, {nt} threads), read bandwidth {bw / 1e9:.1f} GB/s"
          + (f", AMX peak {amx_peak / 1e9:.0f} GOP/s (tdpbusd loop; the int8 GEMM runs on AMX from M = 8)" if amx else ""))

    shapes = QUICK if args.quick else [(m, k, n) for (k, n) in KN_GRID for m in M_GRID]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";") if s.strip()]
    csv_out = Csv(args.csv, info)
    summary = []
    for m, k, n in shapes:
        r = bench_shape(m, k, n, args.reps)
        ops = 2.0 * m * n * k
        for p in provs:
            t = r[p]["ms"]
            gops = ops / (t * 1e-3) / 1e9
            wbytes = r[p].get("bytes", n * k * {"torch_fp32": 4, "torch_bf16": 2}.get(p, 1))
            csv_out.row(kernel="int8_gemm", provider=p, shape=f"M={m},K={k},N={n}",
                        dtype={"torch_fp32": "fp32", "torch_bf16": "bf16", "slimrt_w4": "int4"}.get(p, "int8"), p50_ms=t,
                        rate=f"{gops:.1f} GOP/s; {wbytes / (t * 1e-3) / 1e9:.1f} GB/s",
                        ratio=r["torch_fp32"]["ms"] / t, quality="" if r[p]["sqnr"] != r[p]["sqnr"]
                        else f"SQNR {r[p]['sqnr']:.1f} dB")
        w8a8, w8, gemm = r["slimrt_w8a8"]["ms"], r["slimrt_w8"]["ms"], r["slimrt_gemm"]["ms"]
        rec = {
            "shape": (m, k, n),
            "ms": {p: r[p]["ms"] for p in provs},
            "w8a8_vs_dq": r["torch_dq"]["ms"] / w8a8,
            "w8a8_vs_int_mm": r["torch_int_mm"]["ms"] / w8a8,
            "gemm_vs_int_mm": r["torch_int_mm"]["ms"] / gemm,
            "w8a8_peak": ops / (w8a8 * 1e-3) / peak,
            "gemm_peak": ops / (gemm * 1e-3) / peak,
            "w8_bw": n * k / (w8 * 1e-3) / bw,
            "w8a8_bw": n * k / (w8a8 * 1e-3) / bw,
            "w4_bytes": r["slimrt_w4"]["bytes"],
            "w4_bw": r["slimrt_w4"]["bytes"] / (r["slimrt_w4"]["ms"] * 1e-3) / bw,
            "w4_vs_w8": w8 / r["slimrt_w4"]["ms"],
            "sqnr": r["slimrt_w8a8"]["sqnr"],
            "w4_sqnr": r["slimrt_w4"]["sqnr"],
        }
        summary.append(rec)
        print(f"M={m:4d} K={k:5d} N={n:5d}  " + "  ".join(f"{p}={r[p]['ms']:.3f}ms" for p in provs)
              + f"  | w8a8/dq {rec['w8a8_vs_dq']:.2f}x  w8a8/int_mm {rec['w8a8_vs_int_mm']:.2f}x"
              f"  gemm {rec['gemm_peak']:.0%} peak  w8 {rec['w8_bw']:.0%} bw  w4 {rec['w4_bw']:.0%} bw", flush=True)

    # Probe again at the end and keep the best: on a busy machine a probe only underestimates the bound.
    peak2, bw2, amx_peak2 = probes()
    peak, bw, amx_peak = max(peak, peak2), max(bw, bw2), max(amx_peak, amx_peak2)
    amx_str = f", AMX peak {amx_peak / 1e9:.0f} GOP/s" if amx else ""
    print(f"bounds (best of start and end): int8 peak {peak / 1e9:.0f} GOP/s, read bandwidth {bw / 1e9:.1f} GB/s"
          + amx_str)
    for rec in summary:
        m, k, n = rec["shape"]
        rec["w8a8_peak"] = 2.0 * m * n * k / (rec["ms"]["slimrt_w8a8"] * 1e-3) / peak
        if amx:
            rec["w8a8_amx_peak"] = 2.0 * m * n * k / (rec["ms"]["slimrt_w8a8"] * 1e-3) / amx_peak
            rec["vnni_peak"] = 2.0 * m * n * k / (rec["ms"]["slimrt_w8a8_vnni"] * 1e-3) / peak
        rec["gemm_peak"] = 2.0 * m * n * k / (rec["ms"]["slimrt_gemm"] * 1e-3) / peak
        rec["w8_bw"] = n * k / (rec["ms"]["slimrt_w8"] * 1e-3) / bw
        rec["w8a8_bw"] = n * k / (rec["ms"]["slimrt_w8a8"] * 1e-3) / bw
        rec["w4_bw"] = rec["w4_bytes"] / (rec["ms"]["slimrt_w4"] * 1e-3) / bw
    rows = [[f"{s['shape'][0]}x{s['shape'][1]}x{s['shape'][2]}"] + [f"{s['ms'][p]:.3f}" for p in provs]
            + [f"{s['w8a8_vs_dq']:.2f}", f"{s['w8a8_vs_int_mm']:.2f}", f"{s['gemm_peak']:.0%}",
               f"{s['w8a8_peak']:.0%}"]
            + ([f"{s['w8a8_amx_peak']:.0%}", f"{s['vnni_peak']:.0%}"] if amx else [])
            + [f"{s['w8_bw']:.0%}", f"{s['w4_bw']:.0%}", f"{s['w4_vs_w8']:.2f}", f"{s['sqnr']:.1f}",
               f"{s['w4_sqnr']:.1f}"] for s in summary]

    overhead = markdown_table(["layer (M=1, K=N=64)", "us per call"], per_call_overhead())
    print("\nper-call overhead on a tiny decode shape:\n" + overhead)

    table = markdown_table(["MxKxN"] + [f"{p} ms" for p in provs]
                           + ["w8a8 vs dq", "w8a8 vs int_mm", "gemm % peak", "w8a8 % peak"]
                           + (["w8a8 % AMX peak", "w8a8_vnni % peak"] if amx else [])
                           + ["w8 % bw", "w4 % bw", "w4 vs w8", "w8a8 SQNR dB", "w4 SQNR dB"], rows)
    targets = evaluate_targets(summary)
    md = "\n".join([
        f"machine: {machine_str(info)}; {versions_str(info)}; git {info['git_sha']}; {info['date']}",
        f"bounds measured in this run (best of a probe at start and at end): int8 peak {peak / 1e9:.0f} GOP/s, "
        f"read bandwidth {bw / 1e9:.1f} GB/s{amx_str}"
        + (" (int8 GEMM on AMX from M = 8; % peak is of the VNNI peak, as the targets are)" if amx else ""),
        "", table, "", "Targets:", *[f"- {t}" for t in targets],
        "", "Per-call overhead (best of 15 interleaved rounds of 200 calls, same run):", "", overhead,
    ])
    print("\n" + md)
    print(f"\nCSV rows appended to {args.csv}")
    if args.md:
        Path(args.md).write_text(md + "\n")
    if args.plot:
        roofline(args.plot, summary, provs, peak, bw, amx_peak if amx else None,
                 f"{machine_str(info)}; {versions_str(info)}; git {info['git_sha']}; {info['date']}")
        print(f"roofline chart written to {args.plot}")
    return 0


ROOFLINE_PROVIDERS = ("slimrt_gemm", "slimrt_w8a8", "slimrt_w8a8_vnni", "slimrt_w8", "slimrt_w4", "torch_int_mm",
                      "torch_dq")


def roofline(path: str, summary: list[dict], provs: tuple[str, ...], peak: float, bw: float, amx_peak: float | None,
             caption: str) -> None:
    """The int8 and int4 providers of every shape as points under the roofline of this run's measured bounds."""
    from slimrt.charts import roofline_chart

    points = []
    for s in summary:
        m, k, n = s["shape"]
        ops = 2.0 * m * n * k
        for p in ROOFLINE_PROVIDERS:
            if p in provs:
                # bytes: int8 A, 32-bit C, and B as the kernel streams it (int8, or w4's packed codes + scales)
                b_bytes = s["w4_bytes"] if p == "slimrt_w4" else n * k
                moved = m * k + b_bytes + 4 * m * n
                points.append({"provider": p, "intensity": ops / moved, "gops": ops / (s["ms"][p] * 1e-3) / 1e9})
    extra = {"AMX peak (tdpbusd)": amx_peak} if amx_peak else None
    roofline_chart(path, points, peak, bw, f"int8 / int4 GEMM roofline, {torch.get_num_threads()} threads", caption,
                   extra)


def evaluate_targets(summary: list[dict]) -> list[str]:
    """The int8 GEMM's performance targets, each marked met / NOT met with the measured number."""
    out = []
    med = statistics.median(s["w8a8_vs_dq"] for s in summary)
    out.append(f"{'met' if med >= 1.1 else 'NOT met'}: W8A8 Int8Linear vs torch dynamic-quant Linear, median over "
               f"the grid {med:.2f}x (target >= 1.1x)")
    big = [s for s in summary if s["shape"][0] >= 128 and min(s["shape"][1:]) >= 1536]
    if big:
        r_mm = min(s["w8a8_vs_int_mm"] for s in big)
        r_gemm = min(s["gemm_vs_int_mm"] for s in big)
        pk = min(s["gemm_peak"] for s in big)
        pk_lin = min(s["w8a8_peak"] for s in big)
        out.append(f"{'met' if r_mm >= 1.0 else 'NOT met'}: M >= 128, K, N >= 1536: W8A8 Int8Linear vs raw "
                   f"torch._int_mm, worst {r_mm:.2f}x (raw kernel {r_gemm:.2f}x) (target >= 1.0x)")
        # The target is for the W8A8 Int8Linear with the activation quantization included.
        out.append(f"{'met' if pk_lin >= 0.85 else 'NOT met'}: M >= 128, K, N >= 1536: W8A8 Int8Linear incl. "
                   f"quantization at worst {pk_lin:.0%} of measured int8 peak (raw int8 GEMM kernel {pk:.0%}) "
                   f"(target >= 85%)")
        if "vnni_peak" in big[0]:  # AMX machine: the VNNI kernel alone, and the AMX kernel against its own peak
            out.append(f"(AMX machine) same shapes, the AVX-512 VNNI kernel alone (SLIMRT_AMX=0): W8A8 Int8Linear at worst "
                       f"{min(s['vnni_peak'] for s in big):.0%} of the VNNI peak; the AMX kernel at worst "
                       f"{min(s['w8a8_amx_peak'] for s in big):.0%} of the AMX tdpbusd peak (no target)")
    dec = [s for s in summary if s["shape"] == (1, 4096, 11008)]
    if dec:
        s = dec[0]
        out.append(f"{'met' if s['w8_bw'] >= 0.8 else 'NOT met'}: M = 1, 4096 x 11008: weight-only path at "
                   f"{s['w8_bw']:.0%} of measured read bandwidth, W8A8 path {s['w8a8_bw']:.0%} (target >= 80%)")
        out.append(f"{'met' if s['w4_bw'] >= 0.8 else 'NOT met'}: M = 1, 4096 x 11008: w4 (group {W4_GROUP}) reads "
                   f"its {s['w4_bytes'] / 1e6:.1f} MB at {s['w4_bw']:.0%} of measured read bandwidth, "
                   f"{s['w4_vs_w8']:.2f}x the int8 weight-only path's speed (target >= 80%)")
    return out


if __name__ == "__main__":
    sys.exit(main())
