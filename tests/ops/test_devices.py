"""RELIABILITY 29: tensors on different devices in one call are an error naming the argument.

A call mixing CPU and meta tensors reaches the Meta (fake) kernel, since the dispatcher ranks Meta
above CPU; before the fake kernels checked devices, each of these returned an uninitialised CPU
tensor (garbage such as 1.26e30) instead of an error. Meta-only calls still give shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimrt import ops
from slimrt.attention import sliding_window_mask
from slimrt.nn import Int8Linear, LowRankLinear


def _int8_args():
    torch.manual_seed(0)
    x = torch.randn(4, 67)
    w = torch.randint(-127, 128, (33, 67), dtype=torch.int8)
    return x, w, torch.rand(33) + 0.1, torch.randn(33)


def _attention_args():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 20, 8)
    k = v = torch.randn(1, 2, 20, 8)
    return q, k, v, sliding_window_mask(20, 20, window=8, num_global=1, block_size=4)


def _varlen_args():
    torch.manual_seed(0)
    q = torch.randn(10, 2, 8)
    return q, torch.randn(10, 2, 8), torch.randn(10, 2, 8), torch.tensor([0, 3, 10])


def _meta(t):
    return t.to("meta")


# (op, call(meta_of) -> output, argument that goes to meta): every tensor argument of every op the
# audit named, one at a time.
CASES = [
    ("int8_linear", lambda m: ops.int8_linear(*_pick(_int8_args(), m)), ("x", "w_q", "w_scale", "bias")),
    ("int8_weight_only_linear", lambda m: ops.int8_weight_only_linear(*_pick(_int8_args(), m)),
     ("x", "w_q", "w_scale", "bias")),
    ("lowrank_linear", lambda m: ops.lowrank_linear(*_pick(
        (torch.randn(4, 67), torch.randn(33, 5), torch.randn(5, 67), torch.randn(33)), m)), ("x", "u", "v", "bias")),
    ("varlen_attention", lambda m: ops.varlen_attention(*_pick(_varlen_args(), m)), ("q", "k", "v", "cu_seqlens")),
    ("block_sparse_attention", lambda m: _bsa(m), ("q", "k", "v", "kv_num_blocks", "kv_indices")),
]


def _pick(args, meta_index):
    return tuple(_meta(a) if i == meta_index else a for i, a in enumerate(args))


def _bsa(meta_index):
    q, k, v, mask = _attention_args()
    if meta_index < 3:
        return ops.block_sparse_attention(*_pick((q, k, v), meta_index), mask)
    # The layout tensors on meta: a BlockMask validates its layout on construction (it reads the
    # values), so the op is called with the mask's fields directly.
    kvn, kvi = _pick((mask.kv_num_blocks, mask.kv_indices), meta_index - 3)
    return torch.ops.slimrt.block_sparse_attention(q, k, v, kvn, kvi, mask.block_size, mask.causal, mask.window,
                                                   mask.num_global, mask.token_mask, None)


@pytest.mark.parametrize("op, call, names", CASES, ids=[c[0] for c in CASES])
def test_cpu_and_meta_tensors_in_one_call_are_refused(op, call, names):
    for i, name in enumerate(names):
        with pytest.raises(ValueError, match=rf"{op}: \w+ is on (meta|cpu) but \w+ is on (cpu|meta)") as e:
            out = call(i)
            pytest.fail(f"{op} with {name} on meta returned a {out.device} tensor "
                        f"(first values {out.flatten()[:3].tolist() if out.device.type == 'cpu' else '?'})")
        assert f"{name} is on meta" in str(e.value), f"{op}: the error does not name {name}: {e.value}"


def test_meta_only_calls_still_infer_shapes():
    x, w, s, b = (_meta(t) for t in _int8_args())
    assert ops.int8_linear(x, w, s, b).shape == (4, 33) and ops.int8_linear(x, w, s, b).device.type == "meta"
    assert ops.int8_weight_only_linear(x, w, s, b).shape == (4, 33)
    assert ops.lowrank_linear(x, _meta(torch.randn(33, 5)), _meta(torch.randn(5, 67)), b).shape == (4, 33)
    q, k, v, cu = (_meta(t) for t in _varlen_args())
    assert ops.varlen_attention(q, k, v, cu).shape == (10, 2, 8)


@pytest.mark.parametrize("make", [
    lambda lin: Int8Linear.from_linear(lin), lambda lin: Int8Linear.from_linear(lin, mode="w8"),
    lambda lin: LowRankLinear.from_linear(lin, rank=4),
], ids=["int8_w8a8", "int8_w8", "lowrank"])
def test_module_on_meta_called_with_a_cpu_input_is_refused(make):
    torch.manual_seed(0)
    mod = make(nn.Linear(67, 33)).to("meta")
    with pytest.raises(ValueError, match=r"is on meta but x is on cpu"):
        with torch.no_grad():
            out = mod(torch.randn(4, 67))
            pytest.fail(f"returned a {out.device} tensor: {out.flatten()[:3].tolist()}")
