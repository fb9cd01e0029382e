"""RELIABILITY 35: many load/call cycles keep memory flat (no leak through the bindings or loader)."""

import gc
import os

import pytest
import torch

import slimrt
from slimrt.attention import sliding_window_mask
from slimrt.nn import Int8Linear, LowRankLinear


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")


def _growth(fn, warmup: int, cycles: int) -> float:
    for _ in range(warmup):
        fn()
    gc.collect()
    before = _rss_mb()
    for _ in range(cycles):
        fn()
    gc.collect()
    return _rss_mb() - before


def test_ten_thousand_kernel_calls_keep_memory_flat():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80)
    w8a8, w8 = Int8Linear.from_linear(lin), Int8Linear.from_linear(lin, mode="w8")
    low = LowRankLinear.from_linear(lin, rank=8)
    q = torch.randn(1, 4, 70, 32)
    k = v = torch.randn(1, 2, 70, 32)
    mask = sliding_window_mask(70, 70, window=16, num_global=2, block_size=16)
    x = torch.randn(3, 96)

    def step():
        with torch.inference_mode():
            w8a8(x), w8(x), low(x)
            slimrt.ops.block_sparse_attention(q, k, v, mask)
            slimrt.ops.quantize_per_token(x)

    grown = _growth(step, warmup=200, cycles=10_000)
    assert grown < 8, f"RSS grew {grown:.1f} MB over 10,000 calls of each kernel"


def test_repeated_save_load_keeps_memory_flat(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    slimrt.compress(model, "w8a8", progress=False)
    slimrt.save(model, tmp_path / "ck")
    x = torch.randn(2, 64)

    def cycle():
        m = slimrt.checkpoint.load_model(tmp_path / "ck").model
        with torch.inference_mode():
            m(x)

    grown = _growth(cycle, warmup=20, cycles=300)
    assert grown < 8, f"RSS grew {grown:.1f} MB over 300 load/call cycles"
