"""`slimrt sweep SRC`: every recipe on one model, measured (bytes, speed, quality), written as
sweep.json, sweep.csv and PNG charts with the Pareto-optimal recipes marked (slimrt.sweep)."""

from __future__ import annotations

import argparse
import sys

from slimrt.cli._texts import _read_calibration, _read_texts


def _table(result: dict) -> str:
    """The rows for people: name, bytes, speed, quality, Pareto, or the error."""
    dec = result["kind"] == "decoder"
    head = (["model", "MB", "x size", "prefill tok/s", "decode tok/s", "ppl ratio", "KL", "pareto"] if dec else
            ["model", "MB", "x size", "sentences/s", "cos min", "cos mean", "top-5", "pareto"])
    keys = (("prefill_tokens_per_s", ".0f"), ("decode_tokens_per_s", ".1f"), ("ppl_ratio", ".4f"), ("kl", ".4g")) if dec \
        else (("sentences_per_s", ".1f"), ("cos_min", ".4f"), ("cos_mean", ".4f"), ("retrieval_top5", ".3f"))
    flags = [f for f in result["fields"] if f.startswith("pareto_")]
    lines = []
    for r in result["rows"]:
        def f(key: str, fmt: str) -> str:
            return "-" if r.get(key) is None else format(r[key], fmt)
        cells = [r["name"], f("bytes", ".0f") if r.get("bytes") is None else f"{r['bytes'] / 1e6:.1f}",
                 f("bytes_ratio", ".3f")] + [f(k, fmt) for k, fmt in keys]
        cells.append(",".join(fl[len("pareto_"):] for fl in flags if r.get(fl)) or "-")
        if r["status"] != "ok":
            cells.append(f"FAILED: {r['error']}")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *[ln[:len(head)] for ln in lines])]
    fmt_row = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + (  # noqa: E731
        "  " + cells[len(head)] if len(cells) > len(head) else "")
    return "\n".join([fmt_row(head)] + [fmt_row(c) for c in lines])


def _cmd_sweep(args: argparse.Namespace) -> int:
    from slimrt.sweep import sweep, write

    if not args.no_plot:
        from slimrt.charts import pyplot

        pyplot()  # fails now, with what to install, rather than after the measurements
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes else None
    if recipes == []:
        raise ValueError("--recipes lists no recipe; give comma-separated preset names or JSON files")
    data = _read_texts(args.data) if args.data else None
    calibration = _read_calibration(args.calibration) if args.calibration else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = sweep(args.src, recipes, data, calibration=calibration, peer=args.peer, prefill_tokens=args.prefill_tokens,
                   decode_tokens=args.decode_tokens, reps=args.reps, max_tokens=args.max_tokens,
                   progress=not args.no_progress, data_name=args.data, name=args.name)
    paths = write(result, args.out, plot=not args.no_plot)
    print(_table(result))
    failed = [r["name"] for r in result["rows"] if r["status"] != "ok"]
    print(f"slimrt: wrote {', '.join(paths)}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="compress a model with each recipe; bytes, speed and quality, JSON/CSV and Pareto charts")
    s.add_argument("src", metavar="SRC", help="local Hugging Face model directory, or a .gguf file (llama.cpp)")
    s.add_argument("--recipes", metavar="LIST",
                   help="comma-separated preset names or recipe JSON files (default: every registered preset that "
                        "acts on this model)")
    s.add_argument("--data", metavar="FILE", help="texts for quality and timing, one per line or .jsonl "
                                                  "(default: slimrt's own, the pydoc eval paragraphs)")
    s.add_argument("--calibration", metavar="FILE", help="calibration texts for recipes that calibrate "
                                                         "(default: slimrt's own text)")
    s.add_argument("--name", default=None, help="the model's name in chart titles (default: SRC's file or folder name)")
    s.add_argument("--out", default="sweep", metavar="DIR", help="output directory (default ./sweep; files in it are replaced)")
    s.add_argument("--peer", choices=["llama.cpp"], default=None,
                   help="also measure llama.cpp's F32 / Q8_0 / Q4_0 of the same GGUF (needs llama-cpp-python)")
    s.add_argument("--prefill-tokens", type=int, metavar="N", default=128, help="decoders: prompt tokens timed (default 128)")
    s.add_argument("--decode-tokens", type=int, metavar="N", default=64, help="decoders: tokens generated timed (default 64)")
    s.add_argument("--reps", type=int, metavar="N", default=3, help="timed runs per model, best kept (default 3)")
    s.add_argument("--max-tokens", type=int, metavar="N", default=128, help="tokens per text for quality (default 128)")
    s.add_argument("--threads", type=int, metavar="N", default=None, help="torch.set_num_threads for every model (default: torch's)")
    s.add_argument("--no-plot", action="store_true", help="write sweep.json and sweep.csv only (no matplotlib needed)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_sweep)
