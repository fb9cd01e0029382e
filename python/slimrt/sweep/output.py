"""Writing a sweep's result: sweep.json (everything), sweep.csv (one row per model, ``fields(kind)``)
and the PNG charts (slimrt.charts): quality against stored bytes, and against speed."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from slimrt.sweep.rows import axes, fields

CHARTS = {"bytes": "sweep_bytes.png", "speed": "sweep_speed.png"}


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v  # JSON has no NaN


def caption(result: dict[str, Any]) -> str:
    """The line under each chart: model, text, machine, date."""
    m, s = result["machine"], result["settings"]
    timing = (f"prefill {s['prefill_tokens']} tokens, decode {s['decode_tokens']} tokens, batch 1"
              if result["kind"] == "decoder" else f"embed batches of {s['embed_batch_size']}")
    return (f"{result['name']}: quality on {result['texts']} texts of {result['data']} "
            f"(<= {s['max_tokens']} tokens each); {timing}; best of {s['reps']}; {m['cpu']}, {m['threads']} threads, "
            f"{m['isa']}; slimrt {m['slimrt']}, {m['date']}")


def write(result: dict[str, Any], out: str | os.PathLike, plot: bool = True) -> list[str]:
    """Writes sweep.json, sweep.csv and (plot) the charts into ``out`` (created if missing); returns the paths.
    The data files are written before the charts, so a chart that cannot be drawn loses no measurement."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    cols = fields(result["kind"])
    paths = [os.path.join(out, "sweep.json"), os.path.join(out, "sweep.csv")]
    clean = {**result, "rows": [{k: _json_value(r.get(k)) for k in cols} for r in result["rows"]]}
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(clean, f, indent=1)
        f.write("\n")
    with open(paths[1], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in result["rows"]:
            w.writerow([_csv_value(r.get(k)) for k in cols])
    if plot:
        from slimrt.charts import tradeoff_chart

        xs, y = axes(result["kind"])
        rows = [{**r, "bytes": r["bytes"] / 1e6 if r.get("bytes") is not None else None}
                for r in result["rows"] if r["status"] == "ok"]
        for key, panels in (("bytes", xs[:1]), ("speed", xs[1:])):
            path = os.path.join(out, CHARTS[key])
            tradeoff_chart(path, rows, panels, y, f"{result['name']}: {y.label} against {key}", caption(result))
            paths.append(path)
    return paths


__all__ = ["write", "caption", "CHARTS"]
