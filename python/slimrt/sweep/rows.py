"""The rows of a sweep: their fields (the CSV columns), the charts' axes and the Pareto flags, and
the per-model progress bar with the one-line error a failed row records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SWEEP_VERSION = 1
# Columns of sweep.csv, in order (sweep.json rows hold the same keys). A field that does not apply
# or was not measured (a failed recipe) is null in the JSON and empty in the CSV.
FIELDS_COMMON = ("name", "provider", "recipe", "reference", "status", "error", "bytes", "bytes_ratio", "compress_s")
FIELDS_DECODER = ("prefill_tokens_per_s", "decode_tokens_per_s", "ppl", "ppl_ratio", "kl", "top1",
                  "pareto_bytes", "pareto_decode", "pareto_prefill")
FIELDS_ENCODER = ("sentences_per_s", "cos_min", "cos_mean", "retrieval_top5", "spearman", "pareto_bytes",
                  "pareto_speed")
PEERS = ("llama.cpp",)


def fields(kind: str) -> tuple[str, ...]:
    """The row fields (CSV columns) of a sweep of a model of this kind."""
    if kind not in ("decoder", "encoder"):
        raise ValueError(f"kind={kind!r} is not 'decoder' or 'encoder'")
    return FIELDS_COMMON + (FIELDS_DECODER if kind == "decoder" else FIELDS_ENCODER)


class Steps:
    """One progress bar per recipe, a tick per step (compress, save, speed, quality), or nothing."""

    def __init__(self, name: str, steps: Sequence[str], progress: bool) -> None:
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(steps), desc=f"{name:<16}", unit="step", leave=True,
                            bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    def start(self, step: str) -> None:
        self.step = step
        if self.bar is not None:
            self.bar.set_postfix_str(step)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, summary: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.close()


def error_line(step: str, e: BaseException) -> str:
    """'step: Type: first line of the message', what a failed row records."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{step}: {type(e).__name__}" + (f": {msg}" if msg else "")


def new_row(kind: str, **values: Any) -> dict[str, Any]:
    """A row with every field of its kind (None until measured), provider slimrt, status ok."""
    row: dict[str, Any] = dict.fromkeys(fields(kind))
    row.update(provider="slimrt", reference=False, status="ok")
    row.update(values)
    return row


def axes(kind: str):
    """(x axes, quality axis) of the charts: bytes and speed against perplexity ratio or mean cosine."""
    from slimrt.charts import Axis

    size = Axis("bytes", "stored bytes (MB)", "low")
    if kind == "decoder":
        return ([size, Axis("decode_tokens_per_s", "decode tokens/s (batch 1)", "high"),
                 Axis("prefill_tokens_per_s", "prefill tokens/s (batch 1)", "high")],
                Axis("ppl_ratio", "perplexity / uncompressed", "low"))
    return ([size, Axis("sentences_per_s", "sentences/s", "high")], Axis("cos_mean", "mean cosine to uncompressed", "high"))


def mark_pareto(rows: list[dict[str, Any]], kind: str) -> None:
    """Sets each row's pareto_* flags: optimal in quality against bytes, and against each speed."""
    from slimrt.charts import pareto

    xs, y = axes(kind)
    flags = ["pareto_bytes"] + (["pareto_decode", "pareto_prefill"] if kind == "decoder" else ["pareto_speed"])
    for flag, x in zip(flags, xs):
        for r, best in zip(rows, pareto(rows, x, y)):
            r[flag] = best


__all__ = ["SWEEP_VERSION", "FIELDS_COMMON", "FIELDS_DECODER", "FIELDS_ENCODER", "PEERS", "fields", "Steps",
           "error_line", "new_row", "axes", "mark_pareto"]
