"""slimrt.sweep(src, recipes): every recipe measured on one model, the trade-off at a glance.

For each recipe the source model (a Hugging Face directory or a GGUF file, as `slimrt compress`
reads them) is compressed afresh and measured against the uncompressed model on the same text:
stored bytes (the checkpoint slimrt.save writes, on disk), speed (decoders: prefill and decode
tokens/s at batch 1; encoders: sentences/s) and quality (slimrt.evaluate: perplexity ratio, KL and
top-1 agreement of next-token distributions for decoders; min / mean cosine, top-5 retrieval
agreement and Spearman for encoders). ``peer="llama.cpp"`` adds llama.cpp's F32 / Q8_0 / Q4_0
quantizations of the same GGUF, measured the same way (sweep/peer.py). A recipe that fails is a row
with status "failed" and its error; the sweep goes on.

    result = slimrt.sweep("SmolLM2.gguf", ["w8", "w8a8"])   # a dict; rows per recipe
    write(result, "out/")                                     # sweep.json, sweep.csv, the PNG charts
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

from slimrt.sweep import measure
from slimrt.sweep.output import write
from slimrt.sweep.rows import PEERS, SWEEP_VERSION, Steps, axes, error_line, fields, mark_pareto, new_row

DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _label(recipe: Any) -> str:
    """A row name: the preset name, a JSON file's stem, or the methods of a Recipe / dict."""
    if isinstance(recipe, (str, os.PathLike)):
        s = os.fspath(recipe)
        return os.path.splitext(os.path.basename(s))[0] if os.path.isfile(s) else s
    methods = recipe.get("methods", ()) if isinstance(recipe, Mapping) else getattr(recipe, "methods", ())
    return "+".join(methods) or "recipe"


def _machine() -> dict[str, Any]:
    import datetime

    import torch

    from slimrt import _native
    from slimrt._version import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:  # not Linux: platform's name is what there is
        pass
    isa = _native.load().active_isa() if _native.available() else "reference"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "isa": isa,
            "slimrt": __version__, "torch": torch.__version__.split("+")[0],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def sweep(src: str | os.PathLike, recipes: Sequence[Any] | None = None, data: Sequence[str] | None = None, *,
          calibration: Sequence[Any] | None = None, peer: str | None = None, prefill_tokens: int = 128,
          decode_tokens: int = 64, reps: int = 3, max_tokens: int = 128, progress: bool = True,
          data_name: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Compresses ``src`` with each recipe and measures bytes, speed and quality; returns the result.

    src: a local Hugging Face model directory or a GGUF file (or a directory holding one).
    recipes: preset names, recipe JSON files, Recipes or dicts (default: the registered presets that
    act on this model, ``measure.fitting_presets``). data: the texts for quality and timing (default:
    slimrt's own, the pydoc paragraphs of the "eval" split); data_name says what they were in the result.
    calibration: batches for recipes that calibrate (default: slimrt's own text, as slimrt.compress).
    peer: "llama.cpp" adds its F32 / Q8_0 / Q4_0 of the same GGUF (src must be a GGUF file, and
    llama-cpp-python importable). prefill_tokens / decode_tokens: the batch-1 timing (shrunk to fit a
    short context); reps: timed runs, best kept; max_tokens: tokens per text for quality; name: the
    model's name in chart titles (default: the source's file or folder name, without .gguf).
    Returns {"version", "name", "source", "kind", "model_type", "data", ..., "settings", "machine", "rows"}
    with one row per model (``fields(kind)``): the uncompressed reference first, then the recipes,
    then the peers, and the Pareto flags set (``mark_pareto``).
    """
    from slimrt.evaluate import default_texts, load_hf
    from slimrt.models import KernelPolicy
    from slimrt.recipe import resolve
    from slimrt.runner import Runner, read_embedding_settings

    if peer is not None and peer not in PEERS:
        raise ValueError(f"peer={peer!r} is not one of {', '.join(PEERS)}")
    if reps < 1:
        raise ValueError(f"reps={reps} must be >= 1")
    src = os.fspath(src)
    resolved = [(_label(r), resolve(r)) for r in recipes] if recipes is not None else None  # bad names fail now
    if peer is not None:
        from slimrt.sweep.peer import check_peer

        check_peer(peer, src)
    model, tok = load_hf(src)
    if tok is None:
        raise ValueError(f"{src} has no tokenizer; the sweep needs one to measure speed and quality")
    settings = read_embedding_settings(src) if os.path.isdir(src) else {}
    reference = Runner(model, tok, policy=KernelPolicy(mode="module"), **settings)
    kind = reference.kind
    if peer is not None and kind != "decoder":
        raise ValueError(f"--peer {peer} compares decoders; {src} is an {kind}")
    if resolved is None:
        resolved = [(n, resolve(n)) for n in measure.fitting_presets(model, kind)]
    texts = default_texts() if data is None else list(data)
    prefill, decode = measure.speed_lengths(reference.max_seq_length, prefill_tokens, decode_tokens)
    prompt = measure.prompt_ids(tok, texts, prefill) if kind == "decoder" else []

    def speed(m) -> dict[str, float]:
        rt = Runner(m, tok, **settings)  # the default kernel policy: what slimrt.load runs
        return (measure.decoder_speed(rt, prompt, decode, reps) if kind == "decoder"
                else measure.encoder_speed(rt, texts, reps))

    dtype = str(next(model.parameters()).dtype)
    rows = []
    bar = Steps(DTYPE_NAMES.get(dtype, dtype), ("save", "speed"), progress)
    ref_row = new_row(kind, name=DTYPE_NAMES.get(dtype, dtype), reference=True, **_perfect(kind))
    for step, fn in (("save", lambda: {"bytes": measure.stored_bytes(model)}), ("speed", lambda: speed(model))):
        bar.start(step)
        ref_row.update(fn())
        bar.done()
    bar.close("reference")
    rows.append(ref_row)

    for label, recipe in resolved:
        row = new_row(kind, name=label, recipe=label)
        bar = Steps(label, ("compress", "save", "speed", "quality"), progress)
        try:
            _measure_recipe(row, bar, model, recipe, calibration, tok, speed,
                            lambda m: measure.quality(m, reference, tok, texts, settings, max_tokens))
            bar.close(_summary(row, ref_row))
        except Exception as e:  # recorded (with what was measured before), and the sweep goes on
            row.update(status="failed", error=error_line(bar.step, e))
            bar.close(f"FAILED ({row['error']})")
        rows.append(row)

    ppl_ref = next((r.pop("_ppl_reference") for r in rows if r.get("_ppl_reference") is not None), None)
    for r in rows:
        r.pop("_ppl_reference", None)
    if kind == "decoder":
        ref_row["ppl"] = ppl_ref
    if peer is not None:
        from slimrt.sweep.peer import peer_rows

        rows += peer_rows(src, reference, tok, texts, prompt, decode, reps, max_tokens, progress,
                          lambda **v: new_row(kind, **v))
    for r in rows:
        if r["bytes"] is not None:
            r["bytes_ratio"] = r["bytes"] / ref_row["bytes"]
    mark_pareto(rows, kind)
    return {
        "version": SWEEP_VERSION, "name": name or os.path.basename(src.rstrip("/")).removesuffix(".gguf"),
        "source": src, "kind": kind, "model_type": getattr(model.config, "model_type", None),
        "params": sum(p.numel() for p in model.parameters()), "dtype": dtype,
        "data": data_name or ("slimrt.data.pydoc_paragraphs('eval')" if data is None else "user texts"),
        "texts": len(texts),
        "settings": {"prefill_tokens": prefill if kind == "decoder" else None,
                     "decode_tokens": decode if kind == "decoder" else None,
                     "embed_batch_size": 32 if kind == "encoder" else None,
                     "reps": reps, "max_tokens": max_tokens, "peer": peer},
        "machine": _machine(), "fields": list(fields(kind)), "rows": rows,
    }


def _measure_recipe(row: dict[str, Any], bar: Steps, model: Any, recipe: Any, calibration: Any, tok: Any,
                    speed: Any, quality: Any) -> None:
    """Fills one recipe's row step by step; the compressed copy lives only in this call."""
    from slimrt.compress import compress

    bar.start("compress")
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    compress(m, recipe, calibration=calibration, tokenizer=tok, progress=False)
    row["compress_s"] = time.perf_counter() - t0
    bar.done()
    for step, fn in (("save", lambda: {"bytes": measure.stored_bytes(m)}), ("speed", lambda: speed(m)),
                     ("quality", lambda: quality(m))):
        bar.start(step)
        row.update(fn())
        bar.done()


def _perfect(kind: str) -> dict[str, float]:
    """The reference's quality against itself, by definition (it is not measured)."""
    if kind == "decoder":
        return {"ppl_ratio": 1.0, "kl": 0.0, "top1": 1.0}
    return {"cos_min": 1.0, "cos_mean": 1.0, "retrieval_top5": 1.0, "spearman": 1.0}


def _summary(row: dict[str, Any], ref: dict[str, Any]) -> str:
    size = f"{row['bytes'] / 1e6:.1f} MB ({row['bytes'] / ref['bytes']:.2f}x)"
    if row.get("decode_tokens_per_s") is not None:
        return (f"{size}, decode {row['decode_tokens_per_s']:.1f} tok/s, prefill {row['prefill_tokens_per_s']:.0f} "
                f"tok/s, ppl x{row['ppl_ratio']:.4f}, KL {row['kl']:.4g}")
    return f"{size}, {row['sentences_per_s']:.1f} sent/s, cos min {row['cos_min']:.4f} mean {row['cos_mean']:.4f}"


__all__ = ["sweep", "write", "fields", "mark_pareto", "axes", "SWEEP_VERSION", "PEERS"]
