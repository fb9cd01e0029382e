"""`slimrt embed` and `slimrt generate`: the runner on a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    from slimrt.runner import Runner

    texts = list(args.text or [])
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        raise ValueError("embed: no input; pass --text (repeatable) or --file with one sentence per line")
    t0 = time.perf_counter()
    rt = Runner.from_checkpoint(args.checkpoint)
    t1 = time.perf_counter()
    emb = rt.embed(texts, batch_size=args.batch_size, normalize=not args.no_normalize)
    t2 = time.perf_counter()
    for row in emb.tolist():
        print(json.dumps([round(v, 6) for v in row]))
    if args.verbose:
        print(f"slimrt: loaded in {t1 - t0:.2f} s; embedded {len(texts)} sentences in {t2 - t1:.3f} s "
              f"({len(texts) / max(t2 - t1, 1e-9):.1f} sentences/s), dim {emb.shape[1]}", file=sys.stderr)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from slimrt.runner import Runner

    t0 = time.perf_counter()
    rt = Runner.from_checkpoint(args.checkpoint)
    t1 = time.perf_counter()
    stats: dict = {}
    for piece in rt.stream(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.verbose:
        n, dec = stats.get("new_tokens", 0), stats.get("decode_s", 0.0)
        print(f"slimrt: loaded in {t1 - t0:.2f} s; prompt {stats.get('prompt_tokens', 0)} tokens, prefill "
              f"{stats.get('prefill_s', 0.0) * 1e3:.1f} ms; {n} new tokens in {dec:.3f} s "
              f"({n / max(dec, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("embed", help="sentence embeddings from an encoder checkpoint, one JSON array per line")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--text", action="append", help="a sentence to embed (repeatable)")
    s.add_argument("--file", help="a UTF-8 text file, one sentence per line")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--no-normalize", action="store_true", help="do not scale embeddings to unit length")
    s.add_argument("--verbose", action="store_true", help="print timing (sentences/s) to stderr")
    s.set_defaults(func=_cmd_embed)
    s = sub.add_parser("generate", help="stream a continuation of a prompt from a decoder checkpoint")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--prompt", required=True)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--verbose", action="store_true", help="print timing (tokens/s) to stderr")
    s.set_defaults(func=_cmd_generate)
