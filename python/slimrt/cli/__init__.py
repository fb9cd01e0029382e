"""The `slimrt` command line: one module per command (group), each with ``add_parser(sub)``.

  info.py      slimrt info [CKPT]
  run.py       slimrt embed, slimrt generate
  demo.py      slimrt demo
  bench.py     slimrt bench
  compress.py  slimrt compress (with the quality flags of quality.py)
  quality.py   slimrt eval, slimrt distill
  serve.py     slimrt serve (the OpenAI-compatible HTTP server, slimrt.serve)
  sweep.py     slimrt sweep (every recipe on one model: bytes, speed, quality, Pareto charts; slimrt.sweep)

A new command: a module here with ``add_parser(sub)`` (its ``set_defaults(func=...)`` returns the
exit code), listed in ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import sys

from slimrt.cli import bench, compress, demo, info, quality, run, serve, sweep
from slimrt.cli._texts import _read_calibration, _read_texts  # noqa: F401  (importable from slimrt.cli)
from slimrt.cli.bench import BENCH_ALIASES, _bench_dir  # noqa: F401
from slimrt.cli.quality import QUALITY_EXIT, quality_step  # noqa: F401

COMMANDS = (info, run, serve, demo, bench, compress, quality, sweep)  # in the order `slimrt --help` lists them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimrt", description="Runtime for compressed transformer models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def silence_progress() -> None:
    """--no-progress: every bar off, transformers' and huggingface_hub's included (slimrt's own bars
    take progress=False where they are made)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is optional for some commands; nothing of it to silence then
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_progress", False):
        silence_progress()
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`slimrt embed ... | head -1`): stop quietly as other Unix tools do. Later
        # writes to the closed stdout (at interpreter exit) go to /dev/null instead of raising again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
    except KeyboardInterrupt:
        print("slimrt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line for people; --debug for the traceback
        if args.debug:
            raise
        print(f"slimrt: error: {e}", file=sys.stderr)
        return 2
