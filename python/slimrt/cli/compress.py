"""`slimrt compress SRC -o OUT`: compress a local HF model directory or a GGUF file into a slimrt checkpoint.

The quality flags (--min-cosine / --max-kl gate, --distill-steps) come from cli/quality.py and run
between compression and writing.
"""

from __future__ import annotations

import argparse
import sys

from slimrt.cli._texts import _read_calibration
from slimrt.cli.quality import add_compress_flags, gate_exit, quality_step


def _load_hf_model(src: str):
    """(model, tokenizer or None) from a local HF model directory or a GGUF file (slimrt.evaluate.load_hf)."""
    import os

    from slimrt.evaluate import load_hf
    from slimrt.gguf import is_gguf

    if not os.path.isdir(src) and not is_gguf(src):
        raise ValueError(f"SRC {src!r} is neither a local model directory (config.json and weights) nor a "
                         ".gguf file")
    model, tokenizer = load_hf(src)
    if tokenizer is None:
        print(f"slimrt: no tokenizer in {src}; the checkpoint will have none", file=sys.stderr)
    return model, tokenizer


def _cmd_compress(args: argparse.Namespace) -> int:
    import os

    import slimrt
    from slimrt import checkpoint  # its own module (the checkpoint format); imported before the long steps

    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"output {args.output!r} exists; pass --overwrite to replace it")
    from slimrt.recipe import resolve

    recipe = resolve(args.recipe)
    if args.smoothquant or args.alpha is not None:
        import dataclasses

        recipe = dataclasses.replace(recipe, smoothquant=True, alpha=recipe.alpha if args.alpha is None else args.alpha)
    calibration = _read_calibration(args.calibration) if args.calibration else None
    progress = not args.no_progress
    model, tokenizer = _load_hf_model(args.src)
    if calibration is not None and tokenizer is None:
        raise ValueError(f"--calibration needs a tokenizer, and {args.src} has none")
    slimrt.compress(model, recipe, calibration=calibration, tokenizer=tokenizer, progress=progress)
    if os.path.isdir(args.src):  # sentence-transformers settings travel into the checkpoint
        from slimrt.runner import read_embedding_settings

        model.slimrt_meta.update(read_embedding_settings(args.src))
    report = slimrt.report(model)
    print(report if args.verbose else f"slimrt: {report.summary}")
    quality_step(args, model, tokenizer, args.src)  # --distill-steps, --min-cosine/--max-kl (exit 3)
    checkpoint.save(model, args.output, tokenizer=tokenizer, overwrite=args.overwrite, entropy=args.entropy)
    print(f"slimrt: wrote {args.output}")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("compress", help="compress a local HF model directory or GGUF file into a slimrt checkpoint")
    s.add_argument("src", metavar="SRC", help="local Hugging Face model directory, or a .gguf file (llama.cpp)")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint directory to write")
    s.add_argument("--recipe", default="w8a8", help="preset name (w8a8, w8, ...) or a recipe JSON file")
    s.add_argument("--calibration", metavar="FILE",
                   help="calibration texts: one per line, or .jsonl (default: slimrt's own text where the recipe uses any)")
    s.add_argument("--smoothquant", action="store_true", help="SmoothQuant migration for w8a8 (calibration: --calibration FILE, else slimrt's own text)")
    s.add_argument("--alpha", type=float, default=None, help="SmoothQuant strength in [0, 1] (default 0.5)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--entropy", choices=["zstd"], default=None, help="entropy-code the tensors")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--verbose", action="store_true", help="print the per-layer table (default: a one-line summary)")
    add_compress_flags(s)
    s.set_defaults(func=gate_exit(_cmd_compress))
