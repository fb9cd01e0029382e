"""benchmarks/common.py: the fixed CSV schema and the timers other bench scripts rely on."""

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402


def _info():
    return {"cpu": "test cpu", "cores": 2, "threads": 2, "isa": "scalar", "torch": "t", "slimrt": "s",
            "python": "p", "git_sha": "abc", "date": "2026-01-01 00:00 UTC"}


def test_csv_has_the_fixed_schema_and_one_header(tmp_path):
    path = tmp_path / "out" / "x.csv"
    out = common.Csv(path, _info())
    out.row(kernel="k", provider="p", shape="M=1", dtype="int8", p50_ms=1.23456, rate="1 GOP/s", ratio=2.0, quality="")
    out.row(kernel="k", provider="q", shape="M=2", dtype="int8", p50_ms=2.0, rate="", ratio=1.0, quality="")
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == common.COLUMNS and len(rows) == 3
    rec = dict(zip(rows[0], rows[1]))
    assert rec["p50_ms"] == "1.235" and rec["git_sha"] == "abc" and "test cpu" in rec["machine"]
    with pytest.raises(ValueError, match="unknown columns"):
        out.row(kernel="k", speed=3)


def test_timers_return_positive_medians():
    calls = []
    assert common.time_fn(lambda: calls.append(1), warmup=1, reps=5) >= 0 and len(calls) == 6
    t = common.time_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, reps=5, stat="min")
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())
