"""Pieces every lean forward shares: the linear call, the kernel policy, attention, the KV cache.

The lean forwards never call a Hugging Face module's forward in the hot loop. They read the
weights they need once and call each linear submodule through ``make_linear``, which turns
nn.Linear, GPT-2's Conv1D and slimrt modules alike into a plain ``y = f(x)`` with the least
Python per call. For ``Int8Linear`` the kernel is chosen per call from the row count M.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt.models.policy import KernelPolicy
from slimrt.nn.int8_linear import Int8Linear

Linear = Callable[[Tensor], Tensor]

def make_linear(module: nn.Module, policy: KernelPolicy) -> Linear:
    """A ``y = f(x)`` for any linear-like module, x (..., K) -> y (..., N)."""
    if type(module) is nn.Linear:
        w, b = module.weight, module.bias
        return lambda x: F.linear(x, w, b)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        # transformers' GPT-2 Conv1D: weight (K, N), y = x @ W + b.
        w, b, n = module.weight, module.bias, module.nf
        return lambda x: torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], n)
    if isinstance(module, Int8Linear):
        return _int8_linear(module, policy.rules(module))
    if not callable(module):
        raise TypeError(f"make_linear: {type(module).__name__} is not callable like a linear layer")
    return module


def _int8_linear(module: Int8Linear, rules: tuple[tuple[int, str], ...]) -> Linear:
    fwd = module.forward
    if len(rules) == 1 and rules[0][1] != "dense":
        mode = rules[0][1]
        return lambda x: fwd(x, mode)
    dense_w = dense_b = None
    if any(k == "dense" for _, k in rules):
        # The dense kernel multiplies by the dequantized weight (the same math as "w8"): 4 bytes per
        # weight kept beside the int8 copy, only for layers where measurement found it fastest.
        dense_w = module.dequantized_weight()
        dense_b = None if module.bias is None else module.bias.float()
    first, rest = rules[0][1], rules[1:]

    def call(x: Tensor) -> Tensor:
        m = x.numel() // max(x.shape[-1], 1)
        kernel = first
        for m_min, k in rest:
            if m >= m_min:
                kernel = k
        if kernel == "dense":
            return F.linear(x, dense_w.to(x.dtype), None if dense_b is None else dense_b.to(x.dtype))
        return fwd(x, kernel)

    return call


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
              scale: float | None = None) -> Tensor:
    """Multi-head attention; the one place the attention kernel is chosen.

    q (B, H, T, D); k, v (B, Hkv, L, D) with H a multiple of Hkv (grouped-query attention);
    mask (B, 1, T, L) bool (True = attend) or None; causal only with mask None and T == L.
    -> (B, H, T, D).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


class KVCache:
    """Static per-layer key/value buffers (B, Hkv, max_len, D), written in place, never grown."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int | list[int], max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        # n_kv_heads: one count for all layers, or one per layer (head-pruned models).
        heads = n_kv_heads if isinstance(n_kv_heads, list) else [n_kv_heads] * n_layers
        self.k = [torch.empty((batch, h, max_len, head_dim), dtype=dtype, device=device) for h in heads]
        self.v = [torch.empty((batch, h, max_len, head_dim), dtype=dtype, device=device) for h in heads]
        self.max_len = max_len

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes k, v (B, Hkv, T, D) at [start, start+T) and returns views of [0, start+T)."""
        end = start + k.shape[2]
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, start:end].copy_(k)
        vc[:, :, start:end].copy_(v)
        return kc[:, :, :end], vc[:, :, :end]


@dataclass
class Batch:
    """Per-call layout of a left-padded batch of P prompt tokens plus up to N new tokens.

    valid (B, max_len) bool: key j of row b is real (not left padding); positions (B, max_len)
    long: 0-based position of each slot with padding clamped to 0, so a padded row sees exactly
    the positions it would see alone.
    """

    valid: Tensor
    positions: Tensor
    padded: bool
    prompt_len: int

    @classmethod
    def left_padded(cls, lengths: list[int], max_len: int, device: torch.device) -> "Batch":
        plen = max(lengths)
        pad = torch.tensor([plen - n for n in lengths], device=device).unsqueeze(1)  # (B, 1)
        slots = torch.arange(max_len, device=device).unsqueeze(0)  # (1, max_len)
        return cls(valid=slots >= pad, positions=(slots - pad).clamp_(min=0),
                   padded=bool((pad > 0).any()), prompt_len=plen)

    def prefill_mask(self) -> Tensor | None:
        """(B, 1, P, P) bool causal mask over real keys, or None when no row is padded (then causal)."""
        if not self.padded:
            return None
        p = self.prompt_len
        causal = torch.ones(p, p, dtype=torch.bool, device=self.valid.device).tril_()
        mask = causal & self.valid[:, None, None, :p]
        # A padding query has no real key; letting it see itself keeps its row finite (it is never read).
        return mask | torch.eye(p, dtype=torch.bool, device=mask.device)

    def decode_mask(self) -> Tensor | None:
        """(B, 1, 1, max_len) bool, sliced to [..., :L] per step (a view), or None when unpadded."""
        return self.valid[:, None, None, :] if self.padded else None
