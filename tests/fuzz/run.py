"""Runs the atheris fuzz targets of tests/fuzz for a bounded time each: `make test-fuzz`.

    python tests/fuzz/run.py [--seconds N] [checkpoint] [gguf]

N defaults to $FUZZ_SECONDS, else 60, per target. Each target starts from its seed corpus (valid
files, rewritten every run) plus whatever earlier runs found, in build/fuzz/<target>/corpus; an
input that crashes, hangs (over 30 s) or raises anything but the target's own refusal
(CheckpointError, GGUFError) is written to build/fuzz/<target>/ and fails the run. Reproduce one
with `python tests/fuzz/fuzz_<target>.py build/fuzz/<target>/crash-...`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGETS = ("checkpoint", "gguf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS") or 60))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}; the targets are {', '.join(TARGETS)}")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzzing needs atheris: pip install 'slimrt[fuzz]' (make test-fuzz installs it)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    failed = []
    for name in args.targets or TARGETS:
        work = ROOT / "build" / "fuzz" / name
        corpus = work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        for seed, data in importlib.import_module(f"fuzz_{name}").seeds().items():
            (corpus / f"seed-{seed}").write_bytes(data)
        cmd = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(corpus), f"-max_total_time={args.seconds}",
               "-timeout=30", "-rss_limit_mb=6144", f"-artifact_prefix={work}/", "-print_final_stats=1"]
        print(f"fuzz {name}: {args.seconds} s from {len(list(corpus.iterdir()))} corpus files", flush=True)
        start = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"fuzz {name}: exit {rc} after {time.monotonic() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"fuzz: FAILED {', '.join(failed)}; the inputs are in build/fuzz/<target>/", file=sys.stderr)
        return 1
    print("fuzz: no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
