"""`slimrt info [CKPT]`: this build (ISA, threads, backends), or a checkpoint's recipe, quality and layers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    import slimrt

    if args.checkpoint is None:
        print(json.dumps(slimrt.info(), indent=2))
        return 0
    from slimrt.checkpoint import read_metadata
    from slimrt.compress.report import format_report, format_summary

    meta = read_metadata(args.checkpoint)  # validated slimrt.json; no tensor is read
    root = Path(args.checkpoint)
    files = {name: (root / name).stat().st_size for name in sorted(meta.get("files", {}))}
    if args.json:
        print(json.dumps({"checkpoint": str(root), "file_bytes": files, **meta}, sort_keys=True))
        return 0
    model = meta.get("model", {})
    print(f"checkpoint   {root}")
    print(f"format       {meta.get('format_version')} (written by slimrt {meta.get('slimrt_version')})")
    print(f"model        {model.get('architecture', model.get('kind'))}")
    for name, size in files.items():
        print(f"file         {name}: {size / 1e6:.2f} MB")
    comp = meta.get("compression") or {}
    if comp.get("recipe") is not None:
        print("recipe       " + json.dumps(comp["recipe"], sort_keys=True))
    if comp.get("quality"):
        print("quality      " + json.dumps(comp["quality"], sort_keys=True))
    for key in ("student", "distill"):  # how the checkpoint was distilled (slimrt distill, --distill-steps)
        if comp.get(key):
            print(f"{key:<12} " + json.dumps(comp[key], sort_keys=True))
    if comp.get("layers"):
        if args.verbose:
            print()
            print(format_report(comp))
        else:
            print(f"layers       {format_summary(comp)} (--verbose: the per-layer table)")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("info", help="print the build and chosen ISA, or with CKPT a checkpoint's recipe, layers and sizes")
    s.add_argument("checkpoint", nargs="?", default=None, help="a slimrt checkpoint directory")
    s.add_argument("--json", action="store_true", help="with CKPT: the whole validated metadata as one JSON object")
    s.add_argument("--verbose", action="store_true", help="with CKPT: the per-layer table")
    s.set_defaults(func=_cmd_info)
