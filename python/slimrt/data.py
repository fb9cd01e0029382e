"""Real English text that ships with Python: the paragraphs of ``pydoc_data.topics``.

Used for calibration, evaluation, the demo and the benchmarks. ``split`` gives disjoint sets, so
evaluation never sees the calibration paragraphs.
"""

from __future__ import annotations

import re

_MIN_CHARS = 200


def pydoc_paragraphs(split: str = "all", min_chars: int = _MIN_CHARS) -> list[str]:
    """Paragraphs of pydoc_data.topics with at least min_chars characters, whitespace folded.

    split: "all", "calibration" (every 4th paragraph) or "eval" (the other three quarters); the
    order is fixed (topics sorted by name), so each split is the same on every machine.
    """
    from pydoc_data import topics

    paras: list[str] = []
    for name in sorted(topics.topics):
        for p in re.split(r"\n\s*\n", topics.topics[name]):
            p = " ".join(p.split())
            if len(p) >= min_chars:
                paras.append(p)
    if split == "all":
        return paras
    if split == "calibration":
        return paras[::4]
    if split == "eval":
        return [p for i, p in enumerate(paras) if i % 4]
    raise ValueError(f"pydoc_paragraphs: split={split!r} is not one of all, calibration, eval")
