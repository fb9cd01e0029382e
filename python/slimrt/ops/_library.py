"""The op contract: every ``torch.ops.slimrt.*`` schema, its default kernel and its fake kernel.

Ops are declared with ``torch.library.Library.define`` + ``impl`` rather than ``custom_op``: the
latter costs about 5 us more per call, which matters on the decode path. The default kernel
(CompositeExplicitAutograd) is the PyTorch reference, so every device works; ops/cpu.py and
ops/cuda.py register faster kernels for their dispatch keys. Fake kernels give shapes only, for
torch.compile, meta tensors and opcheck.

The dispatcher picks the Meta kernel for a call that mixes meta and CPU tensors (Meta outranks
CPU), so a fake kernel is also the first code such a call reaches: each one checks that every
tensor argument is on one device and raises the one-sentence ValueError of _check.same_device,
instead of allocating an output on the first argument's device and returning uninitialised memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slimrt.ops import _check, reference, reference_w4

LIB = torch.library.Library("slimrt", "DEF")

SCHEMAS = {
    "quantize_per_token": "quantize_per_token(Tensor x) -> (Tensor, Tensor)",
    "quantize_per_channel": "quantize_per_channel(Tensor w) -> (Tensor, Tensor)",
    "int8_gemm": "int8_gemm(Tensor a, Tensor b, Tensor? a_scale, Tensor? b_scale, ScalarType out_dtype) -> Tensor",
    # Packs an (N, K) int8 weight into the layout the device's kernel wants; an empty tensor means
    # "no packed form" and the linear ops then read w_q directly. Packing is done once per module.
    "int8_pack_weight": "int8_pack_weight(Tensor w_q) -> Tensor",
    # activation: "none" | "gelu" | "gelu_tanh" | "relu" | "silu", applied in fp32 after the bias (reference.ACTIVATIONS).
    "int8_linear": (
        "int8_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias, Tensor? w_packed, str activation=\"none\") "
        "-> Tensor"
    ),
    "int8_weight_only_linear": (
        "int8_weight_only_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias, Tensor? w_packed) -> Tensor"
    ),
    "lowrank_linear": "lowrank_linear(Tensor x, Tensor u, Tensor v, Tensor? bias) -> Tensor",
    # int4 weights (ops/reference_w4.py): packs (w_q4, w_scale, w_zero) once for the device's kernel
    # (empty: none needed), and the linear with int8-quantized activations per group.
    "w4_pack_weight": "w4_pack_weight(Tensor w_q4, Tensor w_scale, Tensor? w_zero, int group_size, int in_features) "
                      "-> Tensor",
    "w4_linear": ("w4_linear(Tensor x, Tensor w_q4, Tensor w_scale, Tensor? w_zero, Tensor? bias, Tensor? w_packed, "
                  "int group_size) -> Tensor"),
}
for _schema in SCHEMAS.values():
    LIB.define(_schema)


def _no_pack(w_q: Tensor) -> Tensor:
    reference._check_linear("int8_pack_weight", torch.empty(w_q.shape[1:], device=w_q.device), w_q,
                            torch.ones(w_q.shape[0], device=w_q.device), None)
    return w_q.new_empty((0,))


DEFAULTS = {
    "quantize_per_token": reference.quantize_per_token,
    "quantize_per_channel": reference.quantize_per_channel,
    "int8_gemm": reference.int8_gemm,
    "int8_pack_weight": _no_pack,
    "int8_linear": lambda x, w_q, w_scale, bias, w_packed, activation="none": reference.int8_linear(
        x, w_q, w_scale, bias, activation
    ),
    "int8_weight_only_linear": lambda x, w_q, w_scale, bias, w_packed: reference.int8_weight_only_linear(
        x, w_q, w_scale, bias
    ),
    "lowrank_linear": reference.lowrank_linear,
    "w4_pack_weight": lambda w_q4, w_scale, w_zero, group_size, in_features: w_q4.new_empty((0,)),
    "w4_linear": lambda x, w_q4, w_scale, w_zero, bias, w_packed, group_size: reference_w4.w4_linear(
        x, w_q4, w_scale, w_zero, bias, group_size
    ),
}
for _name, _fn in DEFAULTS.items():
    LIB.impl(_name, _fn, "CompositeExplicitAutograd")


# Fake (shape-only) kernels.
@torch.library.register_fake("slimrt::quantize_per_token")
def _(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("slimrt::quantize_per_channel")
def _(w: Tensor) -> tuple[Tensor, Tensor]:
    return w.new_empty(w.shape, dtype=torch.int8), w.new_empty(w.shape[:1], dtype=torch.float32)


@torch.library.register_fake("slimrt::int8_gemm")
def _(a: Tensor, b: Tensor, a_scale: Tensor | None, b_scale: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    _check.same_device("int8_gemm", a=a, b=b, a_scale=a_scale, b_scale=b_scale)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


@torch.library.register_fake("slimrt::int8_pack_weight")
def _(w_q: Tensor) -> Tensor:
    # The packed size is device-specific and data-independent: the native CPU kernel's layout
    # (csrc/int8_gemm/int8_gemm.h) where it serves CPU, else "not packed".
    from slimrt.ops._backend import backend

    if w_q.device.type == "cpu" and backend()["cpu"] == "native":
        from slimrt.ops.cpu import packed_size

        return w_q.new_empty((packed_size(w_q.shape[0], w_q.shape[1]),))
    return w_q.new_empty((0,))


@torch.library.register_fake("slimrt::int8_linear")
def _(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, w_packed: Tensor | None,
      activation: str = "none") -> Tensor:
    _check.same_device("int8_linear", x=x, w_q=w_q, w_scale=w_scale, bias=bias, w_packed=w_packed)
    return x.new_empty((*x.shape[:-1], w_q.shape[0]))


@torch.library.register_fake("slimrt::int8_weight_only_linear")
def _(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, w_packed: Tensor | None) -> Tensor:
    _check.same_device("int8_weight_only_linear", x=x, w_q=w_q, w_scale=w_scale, bias=bias, w_packed=w_packed)
    return x.new_empty((*x.shape[:-1], w_q.shape[0]))


@torch.library.register_fake("slimrt::w4_pack_weight")
def _(w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, group_size: int, in_features: int) -> Tensor:
    from slimrt.ops._backend import backend

    if w_q4.device.type == "cpu" and backend()["cpu"] == "native":
        from slimrt.ops.cpu import w4_packed_size

        return w_q4.new_empty((w4_packed_size(w_q4.shape[0], in_features, group_size),))
    return w_q4.new_empty((0,))


@torch.library.register_fake("slimrt::w4_linear")
def _(x: Tensor, w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, bias: Tensor | None,
      w_packed: Tensor | None, group_size: int) -> Tensor:
    _check.same_device("w4_linear", x=x, w_q4=w_q4, w_scale=w_scale, w_zero=w_zero, bias=bias, w_packed=w_packed)
    return x.new_empty((*x.shape[:-1], w_q4.shape[0]))


@torch.library.register_fake("slimrt::lowrank_linear")
def _(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    _check.same_device("lowrank_linear", x=x, u=u, v=v, bias=bias)
    return x.new_empty((*x.shape[:-1], u.shape[0]))


# ---- block-sparse attention ----
# The BlockMask crosses the op boundary as its fields (tensors and scalars), never as a Python object.
LIB.define(
    "block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor kv_num_blocks, Tensor kv_indices, int block_size, "
    "bool causal, int window, int num_global, Tensor? token_mask, float? scale) -> Tensor"
)
LIB.impl("block_sparse_attention", reference.block_sparse_attention, "CompositeExplicitAutograd")


@torch.library.register_fake("slimrt::block_sparse_attention")
def _(q: Tensor, k: Tensor, v: Tensor, kv_num_blocks: Tensor, kv_indices: Tensor, block_size: int, causal: bool,
      window: int, num_global: int, token_mask: Tensor | None, scale: float | None) -> Tensor:
    _check.same_device("block_sparse_attention", q=q, k=k, v=v, kv_num_blocks=kv_num_blocks, kv_indices=kv_indices,
                       token_mask=token_mask)
    return q.new_empty(q.shape)


# ---- varlen attention (packed sequences without padding) ----
LIB.define("varlen_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, bool causal, float? scale) -> Tensor")
LIB.impl("varlen_attention", reference.varlen_attention, "CompositeExplicitAutograd")


@torch.library.register_fake("slimrt::varlen_attention")
def _(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool, scale: float | None) -> Tensor:
    _check.same_device("varlen_attention", q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    return q.new_empty(q.shape)
