"""Import order, as users have it. Every bench script imports this module first.

Users write `import torch` (or transformers, which imports torch) before `import slimrt`; that is the
default here. `--import-order slimrt-first` imports slimrt before anything else instead, so a run of
each shows that slimrt is as fast either way. No environment variable is set in either order.
"""

from __future__ import annotations

import argparse
import sys

CHOICES = ("torch-first", "slimrt-first")


def _from_argv(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--import-order" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--import-order="):
            return a.split("=", 1)[1]
    return "torch-first"


ORDER = _from_argv(sys.argv[1:])
if ORDER not in CHOICES:
    raise SystemExit(f"--import-order {ORDER!r} is not one of {', '.join(CHOICES)}")
if ORDER == "slimrt-first":
    import slimrt  # noqa: F401
else:
    import torch  # noqa: F401


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Adds --import-order to a bench script's parser (the value was applied at import already)."""
    parser.add_argument("--import-order", choices=CHOICES, default="torch-first",
                        help="import torch before slimrt (as users do; default) or slimrt first")
