"""`slimrt bench NAME|all`: runs the scripts in benchmarks/ (they live in the source tree, not in the wheel)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH_ALIASES = {"gemm": "int8_gemm"}
PLOTS = {"int8_gemm": "int8_gemm_roofline.png"}  # the scripts that draw a chart (--plot PNG), and its default file


def _bench_dir() -> Path:
    import slimrt

    d = Path(slimrt.__file__).resolve().parent.parent.parent / "benchmarks"
    if not d.is_dir():
        raise FileNotFoundError(f"benchmarks/ not found next to {d.parent}: the benchmark scripts live in the "
                                "slimrt source checkout; install it with `pip install -e .` from there")
    return d


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    d = _bench_dir()
    if args.name == "all":
        scripts = sorted(d.glob("bench_*.py"))
    else:
        script = d / f"bench_{BENCH_ALIASES.get(args.name, args.name)}.py"
        if not script.is_file():
            known = sorted(p.stem[len("bench_"):] for p in d.glob("bench_*.py"))
            raise ValueError(f"no benchmark named {args.name!r}; known: {', '.join(known + list(BENCH_ALIASES))}, all")
        scripts = [script]
    if args.plot is not None and (args.name == "all" or scripts[0].stem[len("bench_"):] not in PLOTS):
        raise ValueError(f"--plot: only the gemm benchmark draws a chart (a roofline), not {args.name!r}")
    rc = 0
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        cmd += ["--reps", str(args.reps)] if args.reps else []
        if args.plot is not None:
            cmd += ["--plot", args.plot or PLOTS[script.stem[len("bench_"):]]]
        print(f"slimrt bench: {' '.join(cmd[1:])}", flush=True)
        rc = rc or subprocess.run(cmd).returncode
    return rc


def add_parser(sub) -> None:
    s = sub.add_parser("bench", help="run a benchmark from benchmarks/ (gemm, ..., or all)")
    s.add_argument("name", help="benchmark name: gemm (= int8_gemm), any benchmarks/bench_<name>.py, or all")
    s.add_argument("--quick", action="store_true", help="CI-size grid")
    s.add_argument("--reps", type=int, default=None, help="timed rounds per shape (the script's default if unset)")
    s.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help="gemm: also draw the results as a roofline chart (default file int8_gemm_roofline.png; "
                        "needs matplotlib: pip install 'slimrt[plot]')")
    s.set_defaults(func=_cmd_bench)
