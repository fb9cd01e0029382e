"""Shared benchmark helpers: timers, machine info and the fixed-schema CSV every bench script writes.

Usage in a bench script::

    from common import Csv, machine_info, time_interleaved
    info = machine_info()
    t = time_interleaved({"torch": f0, "slimrt": f1}, reps=20)   # {"torch": p50_ms, ...}
    csv = Csv("benchmarks/out/int8_gemm.csv", info)
    csv.row(kernel="int8_gemm", provider="slimrt", shape="M=1,K=4096,N=11008", dtype="int8",
            p50_ms=t["slimrt"], rate="12.3 GB/s", ratio=t["torch"] / t["slimrt"], quality="")

Timings on a shared machine are noisy: time_interleaved runs the providers round-robin, so drift
hits all of them alike and the ratios computed within one run stay meaningful.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ("kernel", "provider", "shape", "dtype", "p50_ms", "rate", "ratio", "quality", "machine", "versions",
           "git_sha", "date")
REPO = Path(__file__).resolve().parent.parent


def time_fn(fn: Callable[[], Any], warmup: int = 3, reps: int = 20, max_s: float = 2.0) -> float:
    """Median wall time of fn() in ms over `reps` runs (fewer if they exceed about max_s), after warmup."""
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    t_end = time.perf_counter() + max_s
    while len(ts) < reps and (len(ts) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 2, reps: int = 15,
                     max_s: float = 3.0, stat: str = "median") -> dict[str, float]:
    """Median (or min) ms per provider, timing them round-robin (one call each per round) so noise is
    shared. "min" suits microsecond overheads on a shared machine, where noise only ever adds time."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + max_s
    rounds = 0
    while rounds < reps and (rounds < 3 or time.perf_counter() < t_end):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
        rounds += 1
    agg = min if stat == "min" else statistics.median
    return {k: agg(v) * 1e3 for k, v in ts.items()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, threads, slimrt ISA, versions, git sha and UTC date of this run."""
    import torch

    import slimrt

    info = slimrt.info()
    order = sys.modules["_import_order"].ORDER if "_import_order" in sys.modules else "torch-first"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": info.get("isa", "reference"),
        "threading": info.get("threading", {}).get("runtime", "reference"),
        "import_order": order,
        "torch": torch.__version__,
        "slimrt": slimrt.__version__,
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_str(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, {info['threads']} threads, isa={info['isa']}, "
            f"threads on {info.get('threading', '?')}, {info.get('import_order', 'torch-first')}")


def versions_str(info: dict[str, Any]) -> str:
    return f"torch={info['torch']} slimrt={info['slimrt']} python={info['python']}"


class Csv:
    """Appends rows with exactly COLUMNS to a CSV (header written when the file is new)."""

    def __init__(self, path: str | os.PathLike, info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fixed = {"machine": machine_str(info), "versions": versions_str(info), "git_sha": info["git_sha"],
                      "date": info["date"]}

    def row(self, **fields: Any) -> None:
        rec = {**self.fixed, **fields}
        unknown = set(rec) - set(COLUMNS)
        if unknown:
            raise ValueError(f"Csv.row: unknown columns {sorted(unknown)}; the schema is {COLUMNS}")
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: _fmt(rec.get(k, "")) for k in COLUMNS})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
