"""The `slimrt` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import slimrt

    print(json.dumps(slimrt.info(), indent=2))
    return 0


# ---- compress ----
def _load_hf_model(src: str):
    """(model, tokenizer or None) from a local HF model directory, without reaching the network."""
    import os

    if not os.path.isdir(src):
        raise ValueError(f"SRC {src!r} is not a local model directory (expected config.json and weights)")
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(src, local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    # Only a real model class from transformers itself: config.json is input, never code to run.
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = AutoModel
    model = cls.from_pretrained(src, local_files_only=True).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as e:  # a model directory without tokenizer files is legal
        print(f"slimrt: no tokenizer in {src} ({type(e).__name__}); the checkpoint will have none", file=sys.stderr)
        tokenizer = None
    return model, tokenizer


def _read_calibration(path: str, batch_size: int = 8) -> list[list[str]]:
    """Calibration texts: a .jsonl file (each line a JSON string or {"text": ...}) or a text file
    (one sample per non-empty line), in batches of batch_size."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--calibration {path}: line {i} is not JSON ({e.msg})") from None
                item = item.get("text") if isinstance(item, dict) else item
                if not isinstance(item, str):
                    raise ValueError(f"--calibration {path}: line {i} is neither a string nor an object with \"text\"")
                line = item
            texts.append(line)
    if not texts:
        raise ValueError(f"--calibration {path} holds no text")
    return [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]


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
    if recipe.smoothquant and calibration is None:
        raise ValueError("--smoothquant needs --calibration FILE")
    progress = not args.no_progress
    model, tokenizer = _load_hf_model(args.src)
    if calibration is not None and tokenizer is None:
        raise ValueError(f"--calibration needs a tokenizer, and {args.src} has none")
    slimrt.compress(model, recipe, calibration=calibration, tokenizer=tokenizer, progress=progress)
    slimrt.report(model)
    checkpoint.save(model, args.output, tokenizer=tokenizer, overwrite=args.overwrite, entropy=args.entropy)
    print(f"slimrt: wrote {args.output}")
    return 0


def _add_compress_parser(sub) -> None:
    s = sub.add_parser("compress", help="compress a local HF model directory into a slimrt checkpoint")
    s.add_argument("src", metavar="SRC", help="local Hugging Face model directory")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint directory to write")
    s.add_argument("--recipe", default="w8a8", help="preset name (w8a8, w8, ...) or a recipe JSON file")
    s.add_argument("--calibration", metavar="FILE", help="calibration texts: one per line, or .jsonl")
    s.add_argument("--smoothquant", action="store_true", help="SmoothQuant migration for w8a8 (needs --calibration)")
    s.add_argument("--alpha", type=float, default=None, help="SmoothQuant strength in [0, 1] (default 0.5)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--entropy", choices=["zstd"], default=None, help="entropy-code the tensors")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_compress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimrt", description="Runtime for compressed transformer models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="print the build, the chosen ISA and the optional pieces found")
    s.set_defaults(func=_cmd_info)
    _add_compress_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("slimrt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line for people; --debug for the traceback
        if args.debug:
            raise
        print(f"slimrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
