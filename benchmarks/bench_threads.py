"""Threads shared with torch: slimrt is as fast in either import order, and torch is no slower beside it.

slimrt's kernels run their parallel loops on the OpenMP runtime that torch loaded (one team of threads
for both). This benchmark checks what that is for, each figure in fresh child processes so that the
import order is real, the two sides of a comparison alternated run by run (drift hits both alike):

1. torch alone vs torch beside slimrt: HF generate on a torch dynamic-quant int8 Llama-style model
   (12 x 768, random weights), tokens/s in a process that never imports slimrt, against one that
   imports slimrt and runs a slimrt op first. Target: within 5%.
2. slimrt's eager decode (the native step switched off, as for a model it does not take: torch ops
   and slimrt kernels alternate inside every step), torch imported first vs slimrt first. Target:
   within 5%.
3. For contrast, 2 with slimrt's own thread pool (SLIMRT_THREADING=pool), the design before.

No environment variable is set except SLIMRT_THREADING in 3.

    python benchmarks/bench_threads.py [--quick] [--reps N] [--csv PATH]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, versions_str  # noqa: E402

# One child's work: build the model (seeded, so every child has the same weights), warm up, time.
CHILD = r"""
import sys, time, json
first, what, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
if first == "slimrt":
    import slimrt, torch
else:
    import torch
    if what != "torch-alone":
        import slimrt
import warnings
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=12, num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)).eval()
prompt = torch.randint(0, 32000, (1, 32), generator=torch.Generator().manual_seed(1))
if what in ("torch-alone", "torch-beside-slimrt"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if what == "torch-beside-slimrt":  # slimrt loaded and its kernels used, as in a mixed program
        slimrt.ops.int8_linear(torch.randn(4, 64), torch.ones(8, 64, dtype=torch.int8), torch.ones(8))
    def run(n):
        with torch.inference_mode():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
else:
    slimrt.compress(model, "w8", progress=False)
    rt = slimrt.Runner(model, native=False)
    ids = prompt[0].tolist()
    def run(n):
        rt.generate_ids([ids], n, eos=False)
run(4)
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter(); run(new); best = min(best, time.perf_counter() - t0)
print(json.dumps({"tokens_per_s": new / best}))
"""


def _child(first: str, what: str, new: int, env: dict[str, str]) -> float:
    r = subprocess.run([sys.executable, "-c", CHILD, first, what, str(new)], env=env, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"child ({first}, {what}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"]


def _pair(a: tuple, b: tuple, reps: int, new: int) -> tuple[float, float]:
    """Median tokens/s of configurations a and b, alternated a, b, a, b, ..."""
    ta, tb = [], []
    for _ in range(reps):
        ta.append(_child(a[0], a[1], new, a[2]))
        tb.append(_child(b[0], b[1], new, b[2]))
    return statistics.median(ta), statistics.median(tb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and tokens")
    ap.add_argument("--reps", type=int, default=None, help="alternated child runs per side (default 5, quick 2)")
    ap.add_argument("--csv", default=str(Path(__file__).resolve().parent / "out" / "threads.csv"))
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.quick else 5)
    new = 16 if args.quick else 48
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SLIMRT_THREADING")}
    info = machine_info()
    csv = Csv(args.csv, info)
    print(f"machine: {machine_str(info)}\nversions: {versions_str(info)}  git {info['git_sha']}  {info['date']}")
    print(f"{reps} alternated child processes per side, best of 3 generations of {new} tokens in each; medians")

    rows = []
    cases = [
        ("torch dynamic int8 decode: alone vs beside slimrt", ("torch", "torch-alone", env),
         ("torch", "torch-beside-slimrt", env)),
        ("slimrt eager decode (w8): torch first vs slimrt first", ("torch", "slimrt-eager", env),
         ("slimrt", "slimrt-eager", env)),
        ("the same on slimrt's own pool (SLIMRT_THREADING=pool)", ("torch", "slimrt-eager", {**env, "SLIMRT_THREADING": "pool"}),
         ("slimrt", "slimrt-eager", {**env, "SLIMRT_THREADING": "pool"})),
    ]
    for label, a, b in cases:
        ta, tb = _pair(a, b, reps, new)
        rows.append([label, ta, tb, tb / ta])
        print(f"{label}: {ta:.1f} vs {tb:.1f} tokens/s ({tb / ta:.3f}x)", flush=True)
        for (first, what, e), t in ((a, ta), (b, tb)):
            threading = e.get("SLIMRT_THREADING", "openmp")
            csv.row(kernel="threads_decode", provider=f"{what} ({first} first, {threading})",
                    shape=f"llama-style 12x768 B=1 prompt=32 new={new}", dtype="int8", p50_ms=new / t * 1e3,
                    rate=f"{t:.1f} tokens/s", ratio=tb / ta, quality="")
    print()
    print(markdown_table(["comparison", "first (tokens/s)", "second (tokens/s)", "second / first"], rows))
    # torch beside slimrt must be no slower (>= 0.95x); the two import orders within 5% either way.
    for (label, _, _, ratio), ok, target in ((rows[0], rows[0][3] >= 0.95, "no slower than 0.95x"),
                                             (rows[1], abs(rows[1][3] - 1) <= 0.05, "within 5%")):
        print(f"- {'met' if ok else 'NOT met'}: {label}: {ratio:.3f}x (target {target})")
    print(f"\nCSV rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
