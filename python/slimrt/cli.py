"""The `slimrt` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    import slimrt

    print(json.dumps(slimrt.info(), indent=2))
    return 0


# ---- bench: runs the scripts in benchmarks/ (they live in the source tree, not in the wheel) ----
BENCH_ALIASES = {"gemm": "int8_gemm"}


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
    rc = 0
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        cmd += ["--reps", str(args.reps)] if args.reps else []
        print(f"slimrt bench: {' '.join(cmd[1:])}", flush=True)
        rc = rc or subprocess.run(cmd).returncode
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimrt", description="Runtime for compressed transformer models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="print the build, the chosen ISA and the optional pieces found")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("bench", help="run a benchmark from benchmarks/ (gemm, ..., or all)")
    s.add_argument("name", help="benchmark name: gemm (= int8_gemm), any benchmarks/bench_<name>.py, or all")
    s.add_argument("--quick", action="store_true", help="CI-size grid")
    s.add_argument("--reps", type=int, default=None, help="timed rounds per shape (the script's default if unset)")
    s.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("slimrt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line for people; --debug for the traceback
        if args.debug:
            raise
        print(f"slimrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
