"""llama.cpp as a peer on the same weights: its own quantizer and its own forward, through
llama-cpp-python (``pip install 'slimrt[llamacpp]'``, which compiles llama.cpp: a few minutes).

"The same weights": llama.cpp's quantize API (llama_model_quantize, requantize allowed) writes an F32
GGUF from the source GGUF, then Q8_0 and Q4_0 from that F32 file (llama.cpp's default choice per
tensor), while transformers reads the same source dequantized to float32 for slimrt. Used by
`slimrt sweep --peer llama.cpp` and benchmarks/bench_llamacpp.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

LLAMA_TYPES = ("F32", "Q8_0", "Q4_0")
INSTALL = "pip install 'slimrt[llamacpp]' (builds llama.cpp from source, a few minutes)"


def available() -> bool:
    """Whether llama-cpp-python imports here."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ImportError(f"the llama.cpp peer needs llama-cpp-python: {INSTALL}") from None
    return llama_cpp


def quantize(src: str | os.PathLike, cache: str | os.PathLike, types: Sequence[str] = LLAMA_TYPES,
             threads: int | None = None) -> dict[str, Path]:
    """{type: path}: F32 from the source GGUF, then each other type from the F32 file, written by
    llama.cpp's own quantizer into ``cache`` (a file newer than the source is reused)."""
    L = _llama_cpp()
    src = Path(src)
    ftypes = {"F32": L.LLAMA_FTYPE_ALL_F32, "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": L.LLAMA_FTYPE_MOSTLY_Q4_0}
    unknown = [t for t in types if t not in ftypes]
    if unknown:
        raise ValueError(f"llama.cpp type {unknown[0]!r} is not one of {', '.join(ftypes)}")
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = {t: cache / f"{src.stem}.{t}.gguf" for t in ("F32", *types)}
    # llama-cpp-python prints llama.cpp's log (every tensor it quantizes) at this logger's level or above.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        _quantize(L, src, out, ftypes, threads)
    finally:
        log.setLevel(level)
    return {t: out[t] for t in types}


def _quantize(L, src: Path, out: dict[str, Path], ftypes: dict[str, int], threads: int | None) -> None:
    for t in out:
        if out[t].exists() and out[t].stat().st_mtime >= src.stat().st_mtime:
            continue
        params = L.llama_model_quantize_default_params()
        params.ftype = ftypes[t]
        params.allow_requantize = True
        params.nthread = threads or torch.get_num_threads()
        inp = src if t == "F32" else out["F32"]
        tmp = out[t].with_suffix(".tmp")
        rc = L.llama_model_quantize(str(inp).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize {inp} -> {t} failed with code {rc}")
        os.replace(tmp, out[t])


class LlamaCpp:
    """One llama.cpp model: prefill / decode timing steps and next-token logits.

    logits_all: keep the logits of every position (needed by ``logits`` and ``batch_logits``; it
    costs the prefill the LM head over every position, so timing runs use a separate instance)."""

    def __init__(self, path: str | os.PathLike, threads: int, logits_all: bool = False, n_ctx: int | None = None) -> None:
        L = _llama_cpp()
        n_ctx = n_ctx or (512 if logits_all else 1024)
        self.n_ctx = n_ctx
        self.llm = L.Llama(str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                           n_batch=min(512, n_ctx), n_ubatch=min(512, n_ctx), logits_all=logits_all, verbose=False,
                           seed=0)

    def prefill(self, ids: Sequence[int]) -> None:
        self.llm.reset()
        self.llm.eval(list(ids))

    def decode(self, first: int, n: int) -> None:
        """A one-token prompt, then n single-token steps (llama-bench's tg)."""
        self.llm.reset()
        self.llm.eval([first])
        self.steps(first, n)

    def steps(self, token: int, n: int) -> None:
        """n single-token steps after what was evaluated so far (the token fed back does not change a step's cost)."""
        for _ in range(n):
            self.llm.eval([token])

    def logits(self, ids: Sequence[int]) -> Tensor:
        """(T, V) float32 next-token logits of one sequence (logits_all instances)."""
        self.llm.reset()
        self.llm.eval(list(ids))
        return torch.from_numpy(self.llm.scores[:len(ids)].copy())

    def batch_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (B, T) right-padded -> (B, T, V) float32; each row evaluated alone, padding left 0
        (never scored); the slimrt.evaluate.evaluate_logits contract."""
        rows = []
        for i, m in zip(ids, mask):
            n = int(m.sum())
            out = torch.zeros(ids.shape[1], self.llm.n_vocab(), dtype=torch.float32)
            out[:n] = self.logits(i[:n].tolist())
            rows.append(out)
        return torch.stack(rows)


__all__ = ["LLAMA_TYPES", "INSTALL", "available", "quantize", "LlamaCpp"]
