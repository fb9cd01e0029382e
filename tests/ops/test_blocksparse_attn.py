"""block_sparse_attention: the native kernel and the reference against a dense fp64 oracle built
from mask.to_dense, on every ISA path; the BlockMask rules against a naive per-pair rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import slimrt
from slimrt import _native
from slimrt.attention import BlockMask, causal_mask, full_mask, sliding_window_mask
from slimrt.ops import reference

NATIVE = _native.available()
ISAS = (["reference"] + list(_native.load().available_isas())) if NATIVE else ["reference"]
# The `isa` fixture (reference, then the native kernel forced onto each ISA): tests/ops/conftest.py.


def attend(isa: str, q, k, v, mask: BlockMask, scale=None):
    if isa == "reference":
        return reference.block_sparse_attention(q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.block_size,
                                                mask.causal, mask.window, mask.num_global, mask.token_mask, scale)
    return slimrt.ops.block_sparse_attention(q, k, v, mask, scale)


def oracle(q, k, v, allowed, scale=None):
    """Dense fp64 attention over the allowed pairs; rows with none give zeros."""
    b, hq, lq, d = q.shape
    g = hq // k.shape[1]
    kf = k.double().repeat_interleave(g, 1)
    vf = v.double().repeat_interleave(g, 1)
    s = (q.double() @ kf.transpose(-1, -2)) * (1 / math.sqrt(d) if scale is None else scale)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ vf


def naive_rule(lq, lk, causal, window, num_global):
    out = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        p = lk - lq + i
        for j in range(lk):
            ok = (not causal or j <= p) and (window == 0 or abs(p - j) < window or j < num_global or p < num_global)
            out[i, j] = ok
    return out


def worst(got, want):
    diff = (got.double() - want.double()).abs()
    at = tuple(diff.flatten().argmax().item() // s % n for s, n in zip(_strides(diff.shape), diff.shape))
    return f"max err {diff.max().item():.3g} at {at}: got {got[at].item():.6g}, want {want[at].item():.6g}"


def _strides(shape):
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return list(reversed(out))


def rand_qkv(b, hq, hkv, lq, lk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, lq, d, generator=g), torch.randn(b, hkv, lk, d, generator=g),
            torch.randn(b, hkv, lk, d, generator=g))


# (B, Hq, Hkv, Lq, Lk, D, block): odd lengths, Lq = 1, Lk = 1, Lq > Lk, Lq < Lk, GQA, D up to 256.
SHAPES = [
    (1, 1, 1, 1, 1, 7, 16),
    (2, 4, 2, 37, 53, 16, 8),
    (1, 4, 1, 1, 1025, 64, 64),
    (1, 2, 1, 67, 257, 33, 32),
    (1, 2, 2, 7, 1, 8, 4),
    (1, 2, 2, 17, 17, 256, 16),
    (1, 2, 2, 130, 130, 64, 64),
]
MASKS = {
    "full": lambda lq, lk, bs: full_mask(lq, lk, bs),
    "causal": lambda lq, lk, bs: causal_mask(lq, lk, bs),
    "window_global": lambda lq, lk, bs: sliding_window_mask(lq, lk, 9, num_global=3, block_size=bs),
    "window_bidir": lambda lq, lk, bs: sliding_window_mask(lq, lk, 5, causal=False, block_size=bs),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", list(MASKS))
def test_fp32_matches_dense_oracle(isa, shape, kind):
    b, hq, hkv, lq, lk, d, bs = shape
    q, k, v = rand_qkv(b, hq, hkv, lq, lk, d)
    mask = MASKS[kind](lq, lk, bs)
    got = attend(isa, q, k, v, mask)
    want = oracle(q, k, v, mask.to_dense(lq, lk))
    assert got.dtype == torch.float32 and got.shape == q.shape
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=1e-5), worst(got, want)


@pytest.mark.parametrize("shape", [(1, 4, 2, 67, 129, 64, 32), (1, 2, 2, 1, 700, 128, 64), (2, 2, 1, 33, 33, 40, 16)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["full", "causal", "window_global"])
def test_bf16_error_at_most_twice_torch(isa, shape, kind):
    """bf16 in, fp32 accumulate: error vs fp64 at most 2x that of PyTorch's SDPA run in bf16."""
    b, hq, hkv, lq, lk, d, bs = shape
    q, k, v = (t.bfloat16() for t in rand_qkv(b, hq, hkv, lq, lk, d, seed=1))
    mask = MASKS[kind](lq, lk, bs)
    allowed = mask.to_dense(lq, lk)
    want = oracle(q, k, v, allowed)
    g = hq // hkv
    torch_out = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=allowed)
    rows = allowed.any(-1, keepdim=True).expand_as(want)  # SDPA gives NaN on empty rows; compare the rest
    torch_err = (torch_out.double() - want).abs()[rows].max().item()
    got = attend(isa, q, k, v, mask)
    assert got.dtype == torch.bfloat16
    err = (got.double() - want).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, f"bf16 error {err:.3g} > 2x torch's {torch_err:.3g}; {worst(got, want)}"


def test_rules_match_naive_per_pair_rule():
    for lq, lk in [(1, 1), (7, 7), (5, 23), (23, 5), (1, 40), (33, 70)]:
        for causal, window, glob in [(True, 0, 0), (True, 4, 0), (True, 6, 2), (False, 3, 0), (False, 5, 4)]:
            for bs in (1, 4, 16):
                if window == 0:
                    mask = causal_mask(lq, lk, bs)
                else:
                    mask = sliding_window_mask(lq, lk, window, num_global=glob, causal=causal, block_size=bs)
                dense = mask.to_dense(lq, lk)[0, 0]
                assert torch.equal(dense, naive_rule(lq, lk, causal, window, glob)), (lq, lk, causal, window, glob, bs)
                # Exactly the blocks holding an allowed pair are listed: no wasted blocks.
                tight = BlockMask.from_token_mask(dense, bs)
                assert torch.equal(mask.kv_num_blocks, tight.kv_num_blocks), (lq, lk, causal, window, glob, bs)


def test_window_mask_density_and_alignment():
    mask = sliding_window_mask(8, 4096, 256, block_size=64)  # 8 queries at positions 4088..4095
    assert mask.kv_num_blocks.tolist() == [[[5]]]  # keys 3832..4095 span blocks 59..63
    assert mask.kv_indices[0, 0, 0].tolist() == [59, 60, 61, 62, 63]
    assert causal_mask(4096, 4096, 64).density() == pytest.approx(65 / 128, abs=1e-3)


def test_token_mask_is_honoured_exactly(isa):
    g = torch.Generator().manual_seed(3)
    lq, lk = 37, 45
    tm = torch.rand(2, 3, lq, lk, generator=g) < 0.3
    tm[0, 1, 5] = False  # an empty row
    mask = BlockMask.from_token_mask(tm, 8)
    assert mask.token_mask is not None and torch.equal(mask.to_dense(lq, lk), tm)
    q, k, v = rand_qkv(2, 3, 3, lq, lk, 24, seed=4)
    got = attend(isa, q, k, v, mask)
    want = oracle(q, k, v, tm)
    assert torch.allclose(got.double(), want, atol=2e-5), worst(got, want)
    assert torch.equal(got[0, 1, 5], torch.zeros(24))


def test_block_aligned_token_mask_needs_no_token_mask():
    blocks = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    tm = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)[:7, :10]
    mask = BlockMask.from_token_mask(tm, 4)
    assert mask.token_mask is None and torch.equal(mask.to_dense(7, 10)[0, 0], tm)


def test_per_head_and_per_batch_masks(isa):
    g = torch.Generator().manual_seed(5)
    b, hq, hkv, lq, lk, bs = 2, 4, 2, 40, 50, 8
    blocks = torch.rand(b, hq, 5, 7, generator=g) < 0.5
    blocks[1, 2, 3] = False  # one query block with no key block at all
    mask = BlockMask.from_dense(blocks, bs, causal=True, seq_lengths=(lq, lk))
    q, k, v = rand_qkv(b, hq, hkv, lq, lk, 32, seed=6)
    got = attend(isa, q, k, v, mask)
    want = oracle(q, k, v, mask.to_dense(lq, lk))
    assert torch.allclose(got.double(), want, atol=2e-5), worst(got, want)
    assert torch.equal(got[1, 2, 24:32], torch.zeros(8, 32))


def test_empty_rows_are_zeros_not_nan(isa):
    # Lq > Lk with causal: the first Lq - Lk queries sit before every key.
    q, k, v = rand_qkv(1, 2, 1, 20, 6, 16, seed=7)
    got = attend(isa, q, k, v, causal_mask(20, 6, 4))
    assert not got.isnan().any()
    assert torch.equal(got[:, :, :14], torch.zeros(1, 2, 14, 16))
    assert got[:, :, 14:].abs().sum() > 0
    none = BlockMask.from_dense(torch.zeros(5, 2, dtype=torch.bool), 4, seq_lengths=(20, 6))
    assert torch.equal(attend(isa, q, k, v, none), torch.zeros_like(q))


def test_decode_long_cache_splits_keys(isa):
    """Lq = 1 over a long cache: the split-keys path merges partial softmax states exactly."""
    q, k, v = rand_qkv(1, 8, 2, 1, 5000, 64, seed=8)
    for mask in (full_mask(1, 5000, 64), sliding_window_mask(1, 5000, 1000, num_global=4, block_size=64),
                 causal_mask(1, 5000, 128)):
        got = attend(isa, q, k, v, mask)
        want = oracle(q, k, v, mask.to_dense(1, 5000))
        assert torch.allclose(got.double(), want, atol=1e-5), worst(got, want)


def test_decode_matches_prefill_rows(isa):
    q, k, v = rand_qkv(1, 4, 2, 16, 300, 64, seed=9)
    full = attend(isa, q, k, v, causal_mask(16, 300, 16))
    last = attend(isa, q[:, :, -1:], k, v, causal_mask(1, 300, 16))
    assert torch.allclose(full[:, :, -1:], last, atol=1e-5), worst(last, full[:, :, -1:])


def test_non_contiguous_inputs(isa):
    g = torch.Generator().manual_seed(10)
    qt = torch.randn(2, 33, 4, 16, generator=g)  # (B, L, H, D) as models store it
    kv = torch.randn(2, 45, 2, 2, 16, generator=g)
    q = qt.transpose(1, 2)
    k, v = kv[:, :, :, 0].transpose(1, 2), kv[:, :, :, 1].transpose(1, 2)
    mask = sliding_window_mask(33, 45, 7, block_size=8)
    want = oracle(q, k, v, mask.to_dense(33, 45))
    got = attend(isa, q, k, v, mask)
    assert torch.allclose(got.double(), want, atol=2e-5), worst(got, want)
    k1 = torch.randn(1, 1, 45, 16, generator=g).expand(2, 2, 45, 16)  # stride-0 batch and heads
    got = attend(isa, q, k1, k1, mask)
    want = oracle(q, k1, k1, mask.to_dense(33, 45))
    assert torch.allclose(got.double(), want, atol=2e-5), worst(got, want)


def test_nan_in_a_query_reaches_only_its_row(isa):
    q, k, v = rand_qkv(1, 1, 1, 20, 20, 16, seed=11)
    q[0, 0, 7, 3] = float("nan")
    got = attend(isa, q, k, v, full_mask(20, 20, 8))
    assert got[0, 0, 7].isnan().all()
    assert not got[0, 0, :7].isnan().any() and not got[0, 0, 8:].isnan().any()
    q, k, v = rand_qkv(1, 4, 2, 1, 3000, 32, seed=11)  # decode: the NaN survives the split-keys merge
    q[0, 1, 0, 0] = float("nan")
    got = attend(isa, q, k, v, full_mask(1, 3000, 64))
    assert got[0, 1].isnan().all() and not got[0, [0, 2, 3]].isnan().any()


def test_custom_scale(isa):
    q, k, v = rand_qkv(1, 2, 2, 9, 9, 8, seed=12)
    mask = causal_mask(9, 9, 4)
    got = attend(isa, q, k, v, mask, scale=0.05)
    want = oracle(q, k, v, mask.to_dense(9, 9), scale=0.05)
    assert torch.allclose(got.double(), want, atol=2e-5), worst(got, want)


@pytest.mark.parametrize("shape", [(0, 2, 2, 5, 5, 8), (1, 2, 2, 0, 5, 8), (1, 2, 2, 5, 0, 8), (1, 2, 2, 5, 5, 0)])
def test_zero_size(isa, shape):
    b, hq, hkv, lq, lk, d = shape
    q, k, v = torch.randn(b, hq, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)
    got = attend(isa, q, k, v, full_mask(lq, lk, 4))
    assert got.shape == q.shape and torch.equal(got, torch.zeros_like(q))


def test_threads_agree(isa):
    q, k, v = rand_qkv(1, 4, 2, 100, 180, 32, seed=13)
    mask = sliding_window_mask(100, 180, 40, num_global=2, block_size=16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attend(isa, q, k, v, mask)
        torch.set_num_threads(max(2, before))
        many = attend(isa, q, k, v, mask)
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(one, many, atol=1e-6), worst(many, one)


@given(b=st.integers(1, 2), g=st.integers(1, 3), hkv=st.integers(1, 2), lq=st.integers(1, 40),
       lk=st.integers(1, 60), d=st.sampled_from([1, 5, 16, 24, 67]), bs=st.sampled_from([1, 3, 8, 16]),
       window=st.integers(0, 12), glob=st.integers(0, 3), causal=st.booleans())
def test_hypothesis_random_shapes(b, g, hkv, lq, lk, d, bs, window, glob, causal):
    q, k, v = rand_qkv(b, g * hkv, hkv, lq, lk, d, seed=lq * 100 + lk)
    if window:
        mask = sliding_window_mask(lq, lk, window, num_global=glob, causal=causal, block_size=bs)
    else:
        mask = causal_mask(lq, lk, bs) if causal else full_mask(lq, lk, bs)
    want = oracle(q, k, v, mask.to_dense(lq, lk))
    for isa in ISAS:
        if isa != "reference":
            _native.set_isa(isa)
        got = attend(isa, q, k, v, mask)
        assert torch.allclose(got.double(), want, atol=3e-5), f"{isa}: {worst(got, want)}"
    if NATIVE:
        _native.set_isa(_native.load().best_isa())


# ---- invalid masks and arguments ----

def _layout(counts, indices):
    return torch.tensor(counts, dtype=torch.int32), torch.tensor(indices, dtype=torch.int32)


@pytest.mark.parametrize("counts,indices,words", [
    ([[[2]]], [[[[0, 5]]]], "out of range"),
    ([[[2]]], [[[[1, 0]]]], "not sorted"),
    ([[[2]]], [[[[1, 1]]]], "duplicated"),
    ([[[3]]], [[[[0, 1]]]], "kv_num_blocks"),
    ([[[-1]]], [[[[0, 1]]]], "kv_num_blocks"),
    ([[[1]]], [[[[-1, 0]]]], "out of range"),
])
def test_invalid_layout_is_a_clear_error(counts, indices, words):
    n, i = _layout(counts, indices)
    with pytest.raises(ValueError, match=words):
        BlockMask(n, i, 4, seq_lengths=(4, 8))  # Lk = 8: key blocks 0 and 1 exist
    # The op checks the raw fields too (both the native kernel and the reference).
    q, k, v = rand_qkv(1, 1, 1, 4, 8, 8)
    for fn in (torch.ops.slimrt.block_sparse_attention, reference.block_sparse_attention):
        with pytest.raises(ValueError, match=words):
            fn(q, k, v, n, i, 4, False, 0, 0, None, None)


def test_mask_field_types_and_shapes():
    n, i = _layout([[[1]]], [[[[0]]]])
    with pytest.raises(TypeError, match="kv_indices"):
        BlockMask(n, i.long(), 4)
    with pytest.raises(ValueError, match="kv_indices"):
        BlockMask(n, i[0], 4)
    with pytest.raises(ValueError, match="block_size"):
        BlockMask(n, i, 0)
    with pytest.raises(ValueError, match="window"):
        BlockMask(n, i, 4, window=-1)
    with pytest.raises(AttributeError, match="immutable"):
        BlockMask(n, i, 4).block_size = 8


def test_mask_that_does_not_fit_the_lengths():
    q, k, v = rand_qkv(1, 2, 2, 30, 40, 8)
    with pytest.raises(ValueError, match="query blocks"):  # wrong block size for this Lq
        slimrt.ops.block_sparse_attention(q, k, v, BlockMask.from_dense(torch.ones(4, 5, dtype=torch.bool), 16))
    with pytest.raises(ValueError, match=r"built for \(Lq, Lk\)"):
        slimrt.ops.block_sparse_attention(q, k, v, causal_mask(30, 48, 8))
    with pytest.raises(ValueError, match="out of range"):  # a key block past Lk = 40
        slimrt.ops.block_sparse_attention(q, k, v, BlockMask.from_dense(torch.ones(4, 6, dtype=torch.bool), 8))
    with pytest.raises(ValueError, match="batch"):
        m = BlockMask.from_dense(torch.ones(3, 1, 4, 5, dtype=torch.bool), 8)
        slimrt.ops.block_sparse_attention(q, k, v, m)


def test_argument_errors_name_the_argument():
    q, k, v = rand_qkv(1, 4, 2, 8, 8, 16)
    mask = full_mask(8, 8, 4)
    op = slimrt.ops.block_sparse_attention
    with pytest.raises(TypeError, match="k has dtype"):
        op(q, k.bfloat16(), v, mask)
    with pytest.raises(TypeError, match="q has dtype"):
        op(q.double(), k.double(), v.double(), mask)
    with pytest.raises(ValueError, match="multiple"):
        op(torch.randn(1, 3, 8, 16), k, v, mask)
    with pytest.raises(ValueError, match="v has shape"):
        op(q, k, v[..., :8], mask)
    with pytest.raises(ValueError, match="k has shape"):
        op(q, k[..., :8], v[..., :8], mask)
    with pytest.raises(ValueError, match="4-D"):
        op(q[0], k, v, mask)
    with pytest.raises(ValueError, match="256"):
        op(torch.randn(1, 1, 8, 264), torch.randn(1, 1, 8, 264), torch.randn(1, 1, 8, 264), mask)
    with pytest.raises(TypeError, match="BlockMask"):
        op(q, k, v, mask.to_dense(8, 8))
    with pytest.raises(RuntimeError, match="requires grad"):
        op(q.requires_grad_(), k, v, mask)


def test_opcheck():
    q, k, v = rand_qkv(1, 4, 2, 19, 23, 16)
    for mask in (sliding_window_mask(19, 23, 5, num_global=1, block_size=8),
                 BlockMask.from_token_mask(torch.rand(19, 23) < 0.5, 8)):
        args = (q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.block_size, mask.causal, mask.window,
                mask.num_global, mask.token_mask, None)
        torch.library.opcheck(torch.ops.slimrt.block_sparse_attention.default, args)


def test_import_exports():
    assert slimrt.BlockMask is BlockMask and slimrt.attention.causal_mask is causal_mask


def test_concurrent_calls_match_serial():
    """Several Python threads in the kernel at once (each with its own packing scratch) give the
    serial results."""
    import threading

    cases = [rand_qkv(1, 4, 2, lq, 150, 32, seed=20 + lq) for lq in (1, 40, 70, 130)]
    masks = [sliding_window_mask(c[0].shape[2], 150, 30, block_size=16) for c in cases]
    serial = [slimrt.ops.block_sparse_attention(*c, m) for c, m in zip(cases, masks)]
    results: dict[int, list] = {}

    def work(i):
        results[i] = [slimrt.ops.block_sparse_attention(*cases[i], masks[i]) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(serial):
        for got in results[i]:
            assert torch.allclose(got, want, atol=1e-6), f"case {i}: {worst(got, want)}"


def test_sparse_mask_packs_only_listed_chunks(isa):
    """Only the key chunks a listed block touches are packed; a block ending on a chunk boundary
    (keys 232..239, chunk 1 unpacked) must not pick up the unpacked neighbour."""
    lq, lk, bs = 40, 600, 8
    blocks = torch.zeros(5, 75, dtype=torch.bool)
    blocks[0, 29] = True   # keys 232..239, the end of chunk 0
    blocks[1, [2, 70]] = True
    blocks[3, 74] = True   # the last, short block (keys 592..599)
    mask = BlockMask.from_dense(blocks, bs, seq_lengths=(lq, lk))
    q, k, v = rand_qkv(1, 2, 1, lq, lk, 24, seed=30)
    got = attend(isa, q, k, v, mask)
    want = oracle(q, k, v, mask.to_dense(lq, lk))
    assert torch.allclose(got.double(), want, atol=2e-5), worst(got, want)
