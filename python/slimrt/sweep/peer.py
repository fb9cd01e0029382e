"""`slimrt sweep --peer llama.cpp`: llama.cpp's quantizations of the same GGUF as rows of the sweep.

Each type (F32, Q8_0, Q4_0; sweep/llamacpp.py writes them with llama.cpp's own quantizer into a
temporary directory) is measured as slimrt's recipes are: bytes (the GGUF file, which also holds the
tokenizer's vocabulary), batch-1 prefill and decode tokens/s of the same prompt with the same thread
count, and quality against the same uncompressed reference (the source dequantized to float32 and
run by transformers) on the same token ids (slimrt.evaluate.evaluate_logits): perplexity ratio, KL
and top-1 agreement.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from slimrt.sweep.llamacpp import INSTALL, LLAMA_TYPES, LlamaCpp, available, quantize
from slimrt.sweep.rows import Steps, error_line


def check_peer(peer: str, src: str) -> None:
    """Refuses, before anything is measured, a peer that cannot run: llama-cpp-python missing, or a
    source llama.cpp cannot quantize (its quantizer reads GGUF files only)."""
    from slimrt.gguf import is_gguf

    if not available():
        raise ValueError(f"--peer {peer} needs llama-cpp-python, which is not installed: {INSTALL}")
    if not is_gguf(src):
        raise ValueError(f"--peer {peer} needs a GGUF source (llama.cpp quantizes GGUF files); {src!r} is not one")


def _speed(llm: LlamaCpp, prompt: Sequence[int], decode: int, reps: int) -> dict[str, float]:
    """The definitions of measure.decoder_speed: prefill of the prompt; decode - 1 single-token steps after it."""
    llm.prefill(prompt[:8])
    best_p = best_d = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        llm.prefill(prompt)
        t1 = time.perf_counter()
        llm.steps(prompt[-1], decode - 1)
        t2 = time.perf_counter()
        best_p, best_d = min(best_p, t1 - t0), min(best_d, (t2 - t1) / (decode - 1))
    return {"prefill_tokens_per_s": len(prompt) / best_p, "decode_tokens_per_s": 1.0 / best_d}


def peer_rows(src: str, reference: Any, tokenizer: Any, texts: Sequence[str], prompt: Sequence[int], decode: int,
              reps: int, max_tokens: int, progress: bool, make_row: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per llama.cpp type (name "llama.cpp <type>", provider "llama.cpp"); failures recorded."""
    import torch

    from slimrt.evaluate import evaluate_logits
    from slimrt.gguf import find_gguf
    from slimrt.sweep.measure import quality_fields

    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimrt-sweep-llamacpp-") as cache:
        files: dict[str, Any] = {}
        for t in LLAMA_TYPES:
            row = make_row(name=f"llama.cpp {t}", provider="llama.cpp", recipe=t)
            bar = Steps(row["name"], ("quantize", "speed", "quality"), progress)
            try:
                bar.start("quantize")
                t0 = time.perf_counter()
                files.update(quantize(find_gguf(src), cache, (t,), threads))
                row.update(compress_s=time.perf_counter() - t0, bytes=os.path.getsize(files[t]))
                bar.done()
                bar.start("speed")
                row.update(_speed(LlamaCpp(files[t], threads, n_ctx=len(prompt) + decode), prompt, decode, reps))
                bar.done()
                bar.start("quality")
                llm = LlamaCpp(files[t], threads, logits_all=True, n_ctx=max_tokens)
                r = evaluate_logits(llm.batch_logits, reference, texts, tokenizer=tokenizer, max_tokens=max_tokens,
                                    progress=False, max_length=llm.n_ctx)
                row.update({k: v for k, v in quality_fields(r).items() if not k.startswith("_")})
                bar.done()
                bar.close(f"{row['bytes'] / 1e6:.1f} MB, decode {row['decode_tokens_per_s']:.1f} tok/s, "
                          f"ppl x{row['ppl_ratio']:.4f}")
            except Exception as e:  # recorded; the other types still run
                row.update(status="failed", error=error_line(bar.step, e))
                bar.close(f"FAILED ({row['error']})")
            rows.append(row)
    return rows


__all__ = ["check_peer", "peer_rows"]
