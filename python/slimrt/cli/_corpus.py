"""`slimrt embed CKPT --input FILE --output OUT [--ray [ADDRESS]]`: a corpus file into Parquet shards
(slimrt.corpus locally, slimrt.ray on Ray Data)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("corpus files (--input/--output: Parquet shards, restartable)")
    g.add_argument("--input", help="a corpus: .jsonl (objects with --text-field, or strings), .parquet, or plain "
                                   "text one passage per line (.txt; --format for other names)")
    g.add_argument("--output", help="a directory of Parquet shards (row, id, embedding); rerun to resume")
    g.add_argument("--format", choices=["jsonl", "parquet", "text"], default=None,
                   help="the input's format (default: from its suffix)")
    g.add_argument("--text-field", default="text", help="the field or column holding the text (default: text)")
    g.add_argument("--id-field", default="id", help="a field or column copied to the output as id where the input "
                                                    "has it (default: id)")
    g.add_argument("--shard-rows", type=int, default=10_000,
                   help="rows per output shard, the unit of restart and of work on Ray (default 10000)")
    g.add_argument("--overwrite", action="store_true", help="replace an --output written for another input or "
                                                           "settings instead of refusing")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local Ray, $RAY_ADDRESS or the running cluster, or ADDRESS "
                        "(HOST:PORT, ray://HOST:10001); needs pip install 'slimrt[ray]'")
    g.add_argument("--workers", type=int, default=None, help="with --ray: actors, each loading the checkpoint "
                                                             "once (default 1)")
    g.add_argument("--threads-per-worker", type=int, default=None,
                   help="with --ray: torch threads and CPUs per actor (default 1)")


def check(args: argparse.Namespace) -> bool:
    """True when this is a corpus run; a ValueError for flags that do not go together."""
    corpus_only = [f"--{n.replace('_', '-')}" for n in ("ray", "workers", "threads_per_worker")
                   if getattr(args, n) is not None]
    if args.input is None and args.output is None:
        if corpus_only:
            raise ValueError(f"embed: {', '.join(corpus_only)} go with --input FILE --output DIR")
        return False
    if args.input is None or args.output is None:
        raise ValueError("embed: --input and --output go together (a corpus file in, a directory of Parquet shards "
                         "out)")
    if args.text or args.file:
        raise ValueError("embed: --text/--file print embeddings; --input/--output write Parquet: use one or the other")
    if args.ray is None and (args.workers is not None or args.threads_per_worker is not None):
        raise ValueError("embed: --workers and --threads-per-worker size the Ray actor pool; add --ray")
    return True


def run(args: argparse.Namespace) -> int:
    normalize = False if args.no_normalize else None
    common = dict(text_field=args.text_field, id_field=args.id_field or None, format=args.format,
                  batch_size=args.batch_size, shard_rows=args.shard_rows, normalize=normalize,
                  overwrite=args.overwrite, progress=not args.no_progress)
    if args.ray is not None:
        from slimrt.ray._cluster import require_ray

        require_ray()  # says what to install before anything is read
        from slimrt.ray.data import embed_corpus

        report = embed_corpus(args.checkpoint, args.input, args.output, address=args.ray or None,
                              workers=args.workers or 1, threads_per_worker=args.threads_per_worker or 1, **common)
    else:
        from slimrt.corpus import embed_corpus

        report = embed_corpus(args.checkpoint, args.input, args.output, **common)
    where = f"on Ray ({args.workers or 1} workers x {args.threads_per_worker or 1} threads)" if args.ray is not None \
        else "locally"
    if args.json:
        print(json.dumps({"output": report.output, "rows": report.rows, "shards": report.shards,
                          "skipped_shards": report.skipped, "embedded": report.embedded,
                          "seconds": round(report.seconds, 4), "rows_per_s": round(report.rate, 2),
                          "ray": args.ray is not None}))
    print(f"slimrt: {report.output}: {report.rows} rows in {report.shards} shards; embedded {report.embedded} "
          f"{where} in {report.seconds:.1f} s ({report.rate:.1f} rows/s)"
          + (f", {report.skipped} shards already done" if report.skipped else ""), file=sys.stderr)
    return 0
