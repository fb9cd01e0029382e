"""`slimrt demo`: compress the bundled all-MiniLM-L6-v2, reload it and compare it with fp32 (slimrt.demo)."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from slimrt import demo

    demo.run(n_texts=args.texts, out_dir=args.output, recipe=args.recipe)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("demo", help="compress the bundled all-MiniLM-L6-v2, reload it and compare it with fp32")
    s.add_argument("--texts", type=int, default=256, help="number of pydoc paragraphs to embed (default 256)")
    s.add_argument("--recipe", default="w8a8", help="compression recipe (default w8a8)")
    s.add_argument("-o", "--output", default=None, help="keep the checkpoint here (default: a temporary directory)")
    s.set_defaults(func=_cmd_demo)
