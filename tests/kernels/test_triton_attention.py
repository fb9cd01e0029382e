"""block_sparse_attention Triton kernel under the interpreter, against a dense fp64 oracle built here.

Written before slimrt.BlockMask and the op were merged: it drives the launcher directly with raw
mask fields (kv_num_blocks, kv_indices, block_size, causal, window, num_global, token_mask), random
layouts, per-batch/per-head masks and forced split-K factors, and builds the dense allowed-pairs mask
itself (attention_oracle.py). The op path through BlockMask is in test_triton_ops.py.
fp32 here (bf16: test_triton_ops.py and test_triton_gpu.py); tolerance 2e-5
relative to the output scale: fp32 online softmax vs an fp64 two-pass softmax.
"""

import math

import pytest
import torch

from attention_oracle import dense_allowed, oracle, random_layout
from triton_env import interpreter_only

pytestmark = [interpreter_only, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def check(b=1, hq=2, hkv=1, lq=20, lk=20, d=16, bs=8, density=0.5, bm=1, hm=1, causal=False, window=0,
          num_global=0, use_token_mask=False, num_splits=None, seed=0, empty_qblock=None):
    from slimrt.kernels.block_sparse_attention import block_sparse_attention

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g)
    k = torch.randn(b, hkv, lk, d, generator=g)
    v = torch.randn(b, hkv, lk, d, generator=g)
    counts, idx, blocks = random_layout(bm, hm, lq, lk, bs, density, g, empty_qblock)
    tmask = torch.rand((bm, hm, lq, lk), generator=g) < 0.7 if use_token_mask else None
    out = block_sparse_attention(q, k, v, counts, idx, bs, causal, window, num_global, tmask, None, num_splits)
    ref = oracle(q, k, v, dense_allowed(blocks, bs, lq, lk, causal, window, num_global, tmask), 1 / math.sqrt(d))
    err = (out.double() - ref).abs().max().item() if out.numel() else 0.0
    assert out.shape == q.shape and out.dtype == q.dtype
    assert err <= 2e-5 * max(1.0, ref.abs().max().item()), f"max error {err:.3e}"
    return out, ref


@pytest.mark.parametrize("lq,lk,bs", [(1, 1, 16), (7, 7, 16), (17, 33, 8), (33, 67, 16), (67, 67, 32), (20, 20, 7)])
def test_odd_lengths_and_block_sizes(lq, lk, bs):
    check(lq=lq, lk=lk, bs=bs, density=0.6)


@pytest.mark.parametrize("causal,window,num_global", [(True, 0, 0), (True, 9, 0), (False, 5, 3), (True, 6, 2)])
def test_token_rule_inside_blocks(causal, window, num_global):
    check(lq=33, lk=45, bs=8, density=0.8, causal=causal, window=window, num_global=num_global)


def test_gqa_and_per_batch_per_head_masks():
    check(b=2, hq=4, hkv=2, lq=17, lk=30, bs=8, bm=2, hm=4, density=0.5, causal=True)


def test_token_mask():
    check(b=2, hq=2, hkv=1, lq=17, lk=25, bs=8, bm=1, hm=2, use_token_mask=True)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_rows_with_no_allowed_key_are_zero(num_splits):
    # Query block 1 lists no key block: its 8 rows are zeros (also through the split-K merge).
    out, ref = check(lq=24, lk=24, bs=8, density=0.9, empty_qblock=1, num_splits=num_splits)
    assert (ref[:, :, 8:16] == 0).all() and (out[:, :, 8:16] == 0).all()
    assert not out[:, :, :8].isnan().any()


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
def test_decode_split_k(num_splits):
    # Lq = 1 against a long cache; split merging must equal the single pass.
    check(b=2, hq=4, hkv=1, lq=1, lk=70, d=24, bs=8, density=0.7, causal=True, num_splits=num_splits)


def test_split_k_for_prefill_too():
    check(lq=33, lk=40, bs=8, density=0.9, causal=True, num_splits=3)


def test_zero_size():
    from slimrt.kernels.block_sparse_attention import block_sparse_attention

    q, k = torch.randn(1, 2, 0, 16), torch.randn(1, 1, 5, 16)
    out = block_sparse_attention(q, k, k, torch.zeros(1, 1, 0, dtype=torch.int32),
                                 torch.zeros(1, 1, 0, 1, dtype=torch.int32), 8)
    assert out.shape == q.shape
    q = torch.randn(1, 2, 3, 16)
    k = torch.randn(1, 1, 0, 16)
    out = block_sparse_attention(q, k, k, torch.zeros(1, 1, 1, dtype=torch.int32),
                                 torch.zeros(1, 1, 1, 0, dtype=torch.int32), 8)
    assert (out == 0).all()
