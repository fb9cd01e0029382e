"""varlen_attention (packed sequences, no padding) against an fp64 per-sequence oracle and the
reference, on every ISA path; strided views of a fused qkv buffer; bad cu_seqlens."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import slimrt
from slimrt.ops import reference

# The `isa` fixture (reference, then the native kernel forced onto each ISA): tests/ops/conftest.py.


def attend(isa, q, k, v, cu, causal=False, scale=None):
    if isa == "reference":
        return reference.varlen_attention(q, k, v, cu, causal, scale)
    return slimrt.ops.varlen_attention(q, k, v, cu, causal, scale)


def cu_of(lens):
    return torch.tensor([0, *torch.tensor(lens, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int64)


def oracle(q, k, v, lens, causal=False, scale=None):
    """fp64, one sequence at a time, written independently of the reference."""
    t, hq, d = q.shape
    g = hq // k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(t, hq, d, dtype=torch.float64)
    s0 = 0
    for n in lens:
        for h in range(hq):
            qs, ks, vs = q[s0:s0 + n, h].double(), k[s0:s0 + n, h // g].double(), v[s0:s0 + n, h // g].double()
            s = qs @ ks.T * scale
            if causal:
                s = s + torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
            out[s0:s0 + n, h] = torch.softmax(s, -1) @ vs
        s0 += n
    return out


LENS = [[85, 1, 0, 128, 67], [1], [300], [7, 17, 33, 64, 65, 129], [0, 0, 5]]


@pytest.mark.parametrize("lens", LENS)
@pytest.mark.parametrize("heads", [(12, 12, 32), (8, 2, 64), (3, 1, 17)])
@pytest.mark.parametrize("causal", [False, True])
def test_fp32_matches_oracle(isa, lens, heads, causal):
    hq, hkv, d = heads
    t = sum(lens)
    g = torch.Generator().manual_seed(t * 31 + hq)
    q, k, v = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv))
    got = attend(isa, q, k, v, cu_of(lens), causal)
    assert got.shape == (t, hq, d) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), oracle(q, k, v, lens, causal), atol=2e-5, rtol=1e-4)


def test_bf16_close_to_oracle(isa):
    lens = [50, 90, 3]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(sum(lens), 4, 32, generator=g).bfloat16() for _ in range(3))
    got = attend(isa, q, k, v, cu_of(lens))
    assert got.dtype == torch.bfloat16
    want = oracle(q, k, v, lens)
    # bf16 output rounding (2^-8 relative) dominates
    assert (got.double() - want).abs().max() < 0.02


def test_strided_views_of_a_fused_qkv_buffer(isa):
    """q, k, v as views into one (T, 3*H*D) projection output: no copies needed or made."""
    lens, h, d = [40, 70, 1], 6, 16
    t = sum(lens)
    qkv = torch.randn(t, 3 * h * d, generator=torch.Generator().manual_seed(2))
    q, k, v = (qkv[:, i * h * d:(i + 1) * h * d].view(t, h, d) for i in range(3))
    assert not q.is_contiguous()
    got = attend(isa, q, k, v, cu_of(lens))
    torch.testing.assert_close(got.double(), oracle(q, k, v, lens), atol=2e-5, rtol=1e-4)


def test_sequences_do_not_see_each_other(isa):
    """Changing one sequence's keys/values leaves every other sequence's output bit-identical."""
    lens = [20, 30, 25]
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(75, 2, 8, generator=g) for _ in range(3))
    a = attend(isa, q, k, v, cu_of(lens))
    k2, v2 = k.clone(), v.clone()
    k2[20:50] += 5.0
    v2[20:50] -= 3.0
    b = attend(isa, q, k2, v2, cu_of(lens))
    assert torch.equal(a[:20], b[:20]) and torch.equal(a[50:], b[50:])
    assert not torch.equal(a[20:50], b[20:50])


def test_equals_dense_attention_of_each_sequence(isa):
    """The packed result equals SDPA run on each sequence alone."""
    lens = [33, 64, 5]
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(sum(lens), 4, 32, generator=g) for _ in range(3))
    got = attend(isa, q, k, v, cu_of(lens))
    s0 = 0
    for n in lens:
        want = torch.nn.functional.scaled_dot_product_attention(
            q[s0:s0 + n].transpose(0, 1), k[s0:s0 + n].transpose(0, 1), v[s0:s0 + n].transpose(0, 1))
        torch.testing.assert_close(got[s0:s0 + n], want.transpose(0, 1), atol=1e-5, rtol=1e-4)
        s0 += n


def test_custom_scale_and_zero_size(isa):
    lens = [9, 4]
    q, k, v = (torch.randn(13, 2, 8, generator=torch.Generator().manual_seed(5)) for _ in range(3))
    got = attend(isa, q, k, v, cu_of(lens), scale=0.05)
    torch.testing.assert_close(got.double(), oracle(q, k, v, lens, scale=0.05), atol=2e-5, rtol=1e-4)
    empty = attend(isa, torch.empty(0, 2, 8), torch.empty(0, 2, 8), torch.empty(0, 2, 8), cu_of([0, 0]))
    assert empty.shape == (0, 2, 8)
    none = attend(isa, torch.empty(0, 2, 8), torch.empty(0, 2, 8), torch.empty(0, 2, 8), cu_of([]))
    assert none.shape == (0, 2, 8)


def test_nan_stays_in_its_sequence(isa):
    lens = [10, 10]
    q, k, v = (torch.randn(20, 2, 8, generator=torch.Generator().manual_seed(6)) for _ in range(3))
    v[3, 0, 0] = float("nan")
    got = attend(isa, q, k, v, cu_of(lens))
    assert torch.isnan(got[:10, 0]).any() and not torch.isnan(got[10:]).any()


@given(lens=st.lists(st.integers(0, 150), min_size=1, max_size=6), causal=st.booleans())
def test_hypothesis_random_lengths(lens, causal):
    t = sum(lens)
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(t, 4, 16, generator=g) for _ in range(3))
    got = slimrt.ops.varlen_attention(q, k, v, cu_of(lens), causal)
    torch.testing.assert_close(got.double(), oracle(q, k, v, lens, causal), atol=2e-5, rtol=1e-4)


BAD = [
    ("cu_seqlens must start at 0", dict(cu=torch.tensor([1, 10]))),
    ("cu_seqlens must start at 0", dict(cu=torch.tensor([0, 6, 5, 10]))),
    ("cu_seqlens must start at 0", dict(cu=torch.tensor([0, 9]))),
    ("cu_seqlens must start at 0", dict(cu=torch.tensor([0, 11]))),
    ("cu_seqlens must start at 0", dict(cu=torch.tensor([], dtype=torch.int64))),
    ("cu_seqlens", dict(cu=torch.tensor([0, 10], dtype=torch.int32))),
    ("cu_seqlens", dict(cu=torch.tensor([[0, 10]]))),
    ("q", dict(q=torch.randn(10, 4, 8).double())),
    ("k", dict(k=torch.randn(10, 2, 8).bfloat16())),
    ("q", dict(q=torch.randn(10, 32))),
    ("k has shape", dict(k=torch.randn(9, 2, 8))),
    ("v has shape", dict(v=torch.randn(10, 2, 7))),
    ("multiple", dict(q=torch.randn(10, 3, 8))),
    ("head dim", dict(q=torch.randn(10, 4, 300), k=torch.randn(10, 2, 300), v=torch.randn(10, 2, 300))),
    ("scale", dict(scale=float("inf"))),
]


@pytest.mark.parametrize("msg,over", BAD, ids=[str(i) for i in range(len(BAD))])
@pytest.mark.parametrize("path", ["reference", "native"])
def test_bad_input_names_the_argument(path, msg, over):
    args = dict(q=torch.randn(10, 4, 8), k=torch.randn(10, 2, 8), v=torch.randn(10, 2, 8),
                cu=torch.tensor([0, 4, 10]), scale=None)
    args.update(over)
    fn = reference.varlen_attention if path == "reference" else slimrt.ops.varlen_attention
    with pytest.raises((ValueError, TypeError), match=msg):
        fn(args["q"], args["k"], args["v"], args["cu"], False, args["scale"])


def test_refuses_grad():
    q = torch.randn(4, 1, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad"):
        slimrt.ops.varlen_attention(q, q.detach(), q.detach(), cu_of([4]))


def test_opcheck():
    lens = [5, 0, 11]
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(16, 4, 8, generator=g) for _ in range(3))
    torch.library.opcheck(torch.ops.slimrt.varlen_attention.default, (q, k[:, :2], v[:, :2], cu_of(lens), True, None))


def test_float16_runs_through_the_reference():
    lens = [5, 9]
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(14, 2, 8, generator=g).half() for _ in range(3))
    got = slimrt.ops.varlen_attention(q, k, v, cu_of(lens))
    assert got.dtype == torch.float16
    assert (got.double() - oracle(q, k, v, lens)).abs().max() < 5e-3


@pytest.mark.parametrize("causal", [False, True])
def test_padded_sdpa_implementation_for_cuda_matches_the_oracle(causal):
    """ops/cuda.py serves varlen_attention on CUDA with torch SDPA over a padded batch; the same code
    runs on CPU tensors here (empty sequences, GQA, a causal mask with padding queries)."""
    from slimrt.ops import cuda

    lens = [7, 0, 33, 1, 20]
    g = torch.Generator().manual_seed(9)
    q, k, v = torch.randn(61, 4, 16, generator=g), torch.randn(61, 2, 16, generator=g), torch.randn(61, 2, 16, generator=g)
    got = cuda.varlen_attention(q, k, v, cu_of(lens), causal, None)
    torch.testing.assert_close(got.double(), oracle(q, k, v, lens, causal), atol=2e-5, rtol=1e-4)
    assert cuda.varlen_attention(q[:0], k[:0], v[:0], cu_of([0]), causal, None).shape == (0, 4, 16)


def test_cu_seqlens_on_another_device_is_refused():
    """The native kernel reads cu_seqlens through its pointer: it must be on q's device (a CUDA
    cu_seqlens with CPU q dispatches to the CUDA implementation, which runs these same checks)."""
    q, k = torch.randn(10, 4, 8), torch.randn(10, 2, 8)
    with pytest.raises(ValueError, match="cu_seqlens is on meta but q is on cpu"):
        reference.varlen_attention(q, k, k, torch.tensor([0, 4, 10], device="meta"))
