"""PNG charts for `slimrt sweep` (quality against bytes and speed, the Pareto front marked) and
`slimrt bench gemm --plot` (a roofline).

matplotlib is an optional extra (``pip install 'slimrt[plot]'``), imported only when a chart is
drawn, with the Agg backend (no display needed). ``pareto`` is plain Python, so the sweep records
which rows are Pareto-optimal without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLOT_EXTRA = "pip install 'slimrt[plot]'"


@dataclass(frozen=True)
class Axis:
    """One axis of a trade-off chart: the row field it shows, its label, and which way is better."""

    key: str
    label: str
    better: str  # "low" or "high"
    log: bool = False

    def __post_init__(self) -> None:
        if self.better not in ("low", "high"):
            raise ValueError(f"Axis.better={self.better!r} is not 'low' or 'high'")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pareto(rows: Sequence[Mapping[str, Any]], x: Axis, y: Axis) -> list[bool]:
    """Per row, whether no other row is at least as good on both axes and better on one. A row
    without a finite value on either axis (a failed recipe) is never optimal and dominates nothing."""
    sx = -1.0 if x.better == "high" else 1.0  # signs turn both axes into "lower is better"
    sy = -1.0 if y.better == "high" else 1.0
    pts = [(sx * r[x.key], sy * r[y.key]) if _finite(r.get(x.key)) and _finite(r.get(y.key)) else None
           for r in rows]
    out = []
    for p in pts:
        out.append(p is not None and not any(
            q is not None and q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1]) for q in pts))
    return out


def pyplot():
    """matplotlib.pyplot on the Agg backend, or an ImportError that says what to install."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"charts need matplotlib: {PLOT_EXTRA}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# One style per kind of point: slimrt's recipes, the uncompressed model, a peer's quantizations.
_STYLE = {"slimrt": ("o", "tab:blue"), "reference": ("*", "black"), "llama.cpp": ("s", "tab:orange")}
_OTHER = ("D", "tab:purple")
_GROUP_LABELS = {"slimrt": "slimrt recipe", "reference": "uncompressed", "llama.cpp": "llama.cpp"}


def _legend(ax, rows: Sequence[Mapping[str, Any]]) -> None:
    """One entry per kind of point present, the front, and what filled / hollow mean."""
    from matplotlib.lines import Line2D

    handles = []
    for group in dict.fromkeys(_group(r) for r in rows):
        marker, color = _STYLE.get(group, _OTHER)
        handles.append(Line2D([], [], ls="none", marker=marker, color=color, markersize=11 if group == "reference" else 7,
                              label=_GROUP_LABELS.get(group, group)))
    handles.append(Line2D([], [], ls="--", color="tab:green", lw=1, label="Pareto front"))
    handles.append(Line2D([], [], ls="none", marker="o", markerfacecolor="none", markeredgecolor="gray",
                          label="hollow: dominated"))
    ax.legend(handles=handles, fontsize=8, loc="best")


def _group(row: Mapping[str, Any]) -> str:
    return "reference" if row.get("reference") else str(row.get("provider", "slimrt"))


def _panel(ax, rows: Sequence[Mapping[str, Any]], x: Axis, y: Axis) -> None:
    shown = [r for r in rows if _finite(r.get(x.key)) and _finite(r.get(y.key))]
    best = pareto(shown, x, y)
    front = sorted((r[x.key], r[y.key]) for r, b in zip(shown, best) if b)
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:green", lw=1, zorder=1)
    for r, b in zip(shown, best):
        group = _group(r)
        marker, color = _STYLE.get(group, _OTHER)
        ax.scatter(r[x.key], r[y.key], marker=marker, s=160 if group == "reference" else 60, zorder=3,
                   edgecolors=color, linewidths=1.5, facecolors=color if b else "none")
        ax.annotate(str(r["name"]), (r[x.key], r[y.key]), textcoords="offset points", xytext=(6, 5), fontsize=8,
                    fontweight="bold" if b else "normal", color="black" if b else "dimgray")
    ax.set_xlabel(x.label + (" (better: higher)" if x.better == "high" else " (better: lower)"))
    ax.set_ylabel(y.label + (" (better: higher)" if y.better == "high" else " (better: lower)"))
    if x.log:
        ax.set_xscale("log")
    if y.log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.12)  # room for the labels right of the points
    if not shown:
        ax.text(0.5, 0.5, "no measured points", transform=ax.transAxes, ha="center")


def _caption(fig, text: str, width_in: float) -> None:
    """Small grey lines under the axes (machine, date, settings), wrapped to the figure's width."""
    import textwrap

    lines = textwrap.wrap(text, width=int(width_in * 17)) if text else []  # ~17 characters of 7 pt per inch
    if lines:
        fig.text(0.5, 0.01, "\n".join(lines), ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.025 * (len(lines) + 0.5) if lines else 0, 1, 1))


def tradeoff_chart(path: str, rows: Sequence[Mapping[str, Any]], xs: Sequence[Axis], y: Axis, title: str,
                   caption: str = "") -> None:
    """One panel per x axis, quality ``y`` up the side; filled markers and bold labels are the
    Pareto-optimal rows of that panel (joined by the dashed front), hollow ones are dominated.
    rows: dicts with "name", "provider" ("slimrt", "llama.cpp"), "reference" (the uncompressed model)
    and the axis keys; rows without finite values (failed recipes) are left out."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(xs), figsize=(6.4 * len(xs), 5.2), squeeze=False)
    for ax, x in zip(axes[0], xs):
        _panel(ax, rows, x, y)
    _legend(axes[0][0], [r for r in rows if _finite(r.get(y.key))])
    fig.suptitle(title, fontsize=11)
    _caption(fig, caption, 6.4 * len(xs))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roofline_chart(path: str, points: Sequence[Mapping[str, Any]], peak_ops: float, bandwidth: float, title: str,
                   caption: str = "", extra_peaks: Mapping[str, float] | None = None) -> None:
    """Achieved GOP/s against arithmetic intensity (ops per byte moved), log-log, under the roof
    min(peak, bandwidth x intensity). points: dicts with "provider", "intensity" (ops/byte) and
    "gops"; peak_ops in op/s, bandwidth in bytes/s; extra_peaks: further flat roofs {label: op/s}
    (the AMX peak where the CPU has one)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.4))
    ai = [p["intensity"] for p in points if _finite(p.get("intensity")) and p["intensity"] > 0]
    lo, hi = (min(ai) / 2, max(ai) * 2) if ai else (0.1, 1000.0)
    lo, hi = min(lo, 0.5 * peak_ops / bandwidth), max(hi, 2 * peak_ops / bandwidth)  # the ridge always shows
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak_ops, bandwidth * a) / 1e9 for a in grid], color="black", lw=2,
            label=f"roof: int8 peak {peak_ops / 1e9:.0f} GOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s")
    for name, pk in (extra_peaks or {}).items():
        ax.plot(grid, [min(pk, bandwidth * a) / 1e9 for a in grid], color="gray", lw=1.5, ls="--",
                label=f"roof: {name} {pk / 1e9:.0f} GOP/s")
    providers = list(dict.fromkeys(str(p["provider"]) for p in points))
    markers = "osD^v<>ph*"
    for i, prov in enumerate(providers):
        ps = [p for p in points if p["provider"] == prov and _finite(p.get("gops")) and _finite(p.get("intensity"))]
        ax.scatter([p["intensity"] for p in ps], [p["gops"] for p in ps], marker=markers[i % len(markers)], s=36,
                   label=prov, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (int8 ops per byte of A, B and C)")
    ax.set_ylabel("achieved GOP/s")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=10)
    _caption(fig, caption, 7.5)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["Axis", "pareto", "pyplot", "tradeoff_chart", "roofline_chart", "PLOT_EXTRA"]
