"""slimrt.report(model): the per-layer table of what compress() did, from model.slimrt_meta."""

from __future__ import annotations

from typing import Any

from torch import nn


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_report(meta: dict[str, Any]) -> str:
    """The table as text: one row per compressed layer, its totals, the whole model, the fallbacks."""
    rows = meta.get("layers", [])
    header = ("module", "method", "kernel", "params before", "params after", "bytes before", "bytes after")
    table = [header]
    for r in rows:
        table.append((r["name"], r["method"], str(r.get("kernel", "")), f"{r['params_before']:,}",
                      f"{r['params_after']:,}", f"{r['bytes_before']:,}", f"{r['bytes_after']:,}"))
    pb, pa = sum(r["params_before"] for r in rows), sum(r["params_after"] for r in rows)
    bb, ba = sum(r["bytes_before"] for r in rows), sum(r["bytes_after"] for r in rows)
    table.append((f"total ({len(rows)} layers)", "", "", f"{pb:,}", f"{pa:,}", f"{bb:,}", f"{ba:,}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {3, 4, 5, 6}

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in table[1:-1]]
    lines += ["  ".join("-" * w for w in widths), fmt(table[-1])]
    t = meta.get("totals")
    if t:
        ratio = t["bytes_before"] / t["bytes_after"] if t["bytes_after"] else float("inf")
        lines.append(f"model: {t['params_before']:,} -> {t['params_after']:,} stored elements, "
                     f"{_mb(t['bytes_before'])} -> {_mb(t['bytes_after'])} ({ratio:.2f}x smaller)")
    methods = ", ".join(meta.get("recipe", {}).get("methods", []))
    lines.append(f"recipe: {methods}" + (" + smoothquant(alpha=%g)" % meta["recipe"]["alpha"]
                                         if meta.get("recipe", {}).get("smoothquant") else ""))
    for m in meta.get("model_methods", []):  # model-level methods (no layer changed), e.g. sparse_attention
        facts = ", ".join(f"{k}={v}" for k, v in m.items() if k != "method")
        lines.append(f"model-level: {m.get('method')}: {facts}")
    fallbacks = meta.get("fallbacks", {})
    lines.append(f"kept dense (fallbacks): {len(fallbacks)}")
    lines += [f"  {name}: {reason}" for name, reason in fallbacks.items()]
    return "\n".join(lines)


def format_summary(meta: dict[str, Any]) -> str:
    """One line: layers compressed, by which methods, bytes before / after, fallbacks."""
    rows = meta.get("layers", [])
    recipe = meta.get("recipe", {})
    methods = "+".join(recipe.get("methods", [])) + (" + smoothquant" if recipe.get("smoothquant") else "")
    t = meta.get("totals") or {}
    size = ""
    if t:
        ratio = t["bytes_before"] / t["bytes_after"] if t["bytes_after"] else float("inf")
        size = f", {_mb(t['bytes_before'])} -> {_mb(t['bytes_after'])} ({ratio:.2f}x smaller)"
    fallbacks = meta.get("fallbacks", {})
    return f"{len(rows)} layers compressed ({methods}){size}; kept dense (fallbacks): {len(fallbacks)}"


class Report(str):
    """The per-layer table as a string whose repr is the table itself, so a REPL shows it once and
    readably; ``.summary`` is the one-line form, ``.meta`` what it was made from."""

    meta: dict[str, Any]

    def __new__(cls, meta: dict[str, Any]) -> "Report":
        obj = super().__new__(cls, format_report(meta))
        obj.meta = meta
        return obj

    def __repr__(self) -> str:
        return str(self)

    @property
    def summary(self) -> str:
        return format_summary(self.meta)


def report(model: nn.Module, *, echo: bool = False) -> Report:
    """The per-layer table of a compressed model (a Report: print it, or look at it in a REPL);
    ``echo=True`` also prints it."""
    meta = getattr(model, "slimrt_meta", None)
    if meta is None:
        raise ValueError("report: this model has no slimrt_meta; run slimrt.compress(model, recipe) first")
    out = Report(meta)
    if echo:
        print(out)
    return out
