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
    def call(x: Tensor) -> Tensor:
        kernel = _kernel_for(rules, x.numel() // max(x.shape[-1], 1))
        if kernel == "dense":
            return F.linear(x, dense_w.to(x.dtype), None if dense_b is None else dense_b.to(x.dtype))
        return fwd(x, kernel)

    return call


def _kernel_for(rules: tuple[tuple[int, str], ...], m: int) -> str:
    """The kernel the policy's rules give a call of m rows: the last rule whose m_min <= m."""
    kernel = rules[0][1]
    for m_min, k in rules[1:]:
        if m >= m_min:
            kernel = k
    return kernel


# Hugging Face activation names -> the int8_linear epilogue activation with the same math.
_FUSABLE_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                "silu": "silu", "swish": "silu"}


def make_linear_act(module: nn.Module, policy: KernelPolicy, hf_act: str | None, act_fn: Callable) -> Linear:
    """``y = act_fn(linear(x))``; where the call runs the W8A8 kernel, the activation is fused into the
    GEMM epilogue instead (``hf_act``: the config's activation name; unknown names are never fused)."""
    lin = make_linear(module, policy)
    fused = _FUSABLE_ACT.get(hf_act) if isinstance(hf_act, str) else None
    if fused is None or not isinstance(module, Int8Linear):
        return lambda x: act_fn(lin(x))
    rules, fwd = policy.rules(module), module.forward

    def call(x: Tensor) -> Tensor:
        if _kernel_for(rules, x.numel() // max(x.shape[-1], 1)) == "w8a8":
            return fwd(x, "w8a8", fused)
        return act_fn(lin(x))

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

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def row(self, b: int) -> "KVCache":
        """A batch-1 cache over row b's buffers (views: what it writes lands in this cache), for the
        eager prefill of one sequence of a cache whose rows hold independent sequences."""
        if not 0 <= b < self.k[0].shape[0]:
            raise ValueError(f"KVCache.row: row {b} is outside [0, {self.k[0].shape[0]})")
        out = KVCache.__new__(KVCache)
        out.k, out.v, out.max_len = [t[b:b + 1] for t in self.k], [t[b:b + 1] for t in self.v], self.max_len
        return out

    def attend(self, layer: int, start: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
               scale: float | None = None) -> Tensor:
        """Writes k, v (B, Hkv, T, D) at [start, start+T) and attends q (B, H, T, D) over [0, start+T)."""
        k_all, v_all = self.update(layer, start, k, v)
        return attention(q, k_all, v_all, mask, causal, scale)


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


# ---- sliding-window attention with sinks (recipe method "sparse_attention") ----

class WindowKVCache:
    """Bounded per-layer key/value buffers (B, Hkv, G + W, D) for sliding-window attention with G sinks.

    Slot of position p: p itself for p < G (sinks, kept forever), else G + (p - G) % W (a ring over
    the W most recent positions). Keys are stored after RoPE, so a slot's content does not depend
    on where it sits and attention over the filled slots, in any order, is exactly attention over
    the allowed keys {j <= p : p - j < W or j < G}. Memory is flat however long the generation.
    Attention runs in slimrt.ops.block_sparse_attention: the prefill with a causal
    sliding_window_mask(P, P, W, G), each decode step over the filled slots (a full mask: the ring
    already holds exactly the allowed keys). A left-padded batch (``set_padding``) keeps each row's
    slots by its true position, with per-row token masks while the rings fill.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int | list[int], max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, window: int, num_global: int, block_size: int) -> None:
        heads = n_kv_heads if isinstance(n_kv_heads, list) else [n_kv_heads] * n_layers
        # Positions never reach max_len, so fewer slots suffice for short calls (no slot then wraps).
        self.slots = min(num_global + window, max_len)
        self.window, self.num_global, self.block_size = window, num_global, block_size
        # Zeros, not empty: in a padded batch a row whose ring is still filling has slots that its token
        # mask excludes but the kernel still reads (a masked key's value is weighted by 0, and 0 * NaN
        # from uninitialised memory would be NaN).
        self.k = [torch.zeros((batch, h, self.slots, head_dim), dtype=dtype, device=device) for h in heads]
        self.v = [torch.zeros((batch, h, self.slots, head_dim), dtype=dtype, device=device) for h in heads]
        self.max_len = max_len
        self.pad: Tensor | None = None  # (B,) left padding per row, when the batch is padded
        self._masks: dict[tuple, object] = {}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def _slot(self, pos: Tensor | int):
        g, w = self.num_global, self.window
        if isinstance(pos, int):
            return pos if pos < g else g + (pos - g) % w
        return torch.where(pos < g, pos, g + (pos - g) % w)

    def _mask(self, lq: int, lk: int):
        from slimrt.attention import full_mask, sliding_window_mask

        key = (lq, lk)
        m = self._masks.get(key)
        if m is None:
            m = (sliding_window_mask(lq, lk, self.window, self.num_global, causal=True, block_size=self.block_size)
                 if lq > 1 else full_mask(lq, lk, self.block_size))
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = m
        return m

    def set_padding(self, batch: "Batch") -> None:
        """Left padding per row (from the runner's Batch): row b's true position is slot - pad[b]."""
        pad = (~batch.valid).sum(dim=1)  # (B,)
        self.pad = pad if bool((pad > 0).any()) else None

    def _padded_mask(self, start: int, t: int):
        """BlockMask for a left-padded batch: the rule in each row's true positions, padding keys excluded."""
        from slimrt.attention import BlockMask

        key = ("pad", start, t)
        m = self._masks.get(key)
        if m is None:
            pad = self.pad.view(-1, 1, 1)
            if start == 0:  # prefill over the prompt slots [0, t)
                qt = torch.arange(t, device=pad.device).view(1, -1, 1) - pad  # (B, T, 1) true positions
                kt = torch.arange(t, device=pad.device).view(1, 1, -1) - pad  # (B, 1, T)
                ok = (kt >= 0) & (kt <= qt) & ((qt - kt < self.window) | (kt < self.num_global))
            else:  # one decode step over the filled slots of each row
                n = min(start + 1, self.slots)
                filled = torch.clamp(start + 1 - self.pad, max=self.slots).view(-1, 1, 1)
                ok = torch.arange(n, device=pad.device).view(1, 1, -1) < filled  # (B, 1, n)
            m = BlockMask.from_token_mask(ok.unsqueeze(1), self.block_size)
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = m
        return m

    def attend(self, layer: int, start: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
               scale: float | None = None) -> Tensor:
        """Writes k, v (B, Hkv, T, D) of slots [start, start+T) and attends q (B, H, T, D) -> (B, H, T, D).

        Unpadded batches ignore ``mask``; a left-padded batch (``set_padding``) applies the rule in
        each row's true positions, so every row equals its run alone.
        """
        from slimrt import ops

        if mask is not None and self.pad is None:
            raise ValueError("sliding-window attention got a padding mask without set_padding(batch)")
        t = k.shape[2]
        kc, vc = self.k[layer], self.v[layer]
        if start == 0:  # prefill: attend over the prompt itself, then keep its sinks and last W positions
            if self.pad is None:
                pos = torch.arange(t, device=k.device)
                keep = (pos < self.num_global) | (pos >= t - self.window)
                src = pos[keep]
                dst = self._slot(src)
                kc.index_copy_(2, dst, k.index_select(2, src))
                vc.index_copy_(2, dst, v.index_select(2, src))
                return ops.block_sparse_attention(q, k, v, self._mask(t, t), scale)
            for b, pad in enumerate(self.pad.tolist()):
                real = t - pad
                pos = torch.arange(real, device=k.device)  # true positions of the row's prompt
                keep = (pos < self.num_global) | (pos >= real - self.window)
                src = pos[keep]
                kc[b].index_copy_(1, self._slot(src), k[b].index_select(1, src + pad))
                vc[b].index_copy_(1, self._slot(src), v[b].index_select(1, src + pad))
            return ops.block_sparse_attention(q, k, v, self._padded_mask(0, t), scale)
        if t != 1:
            raise ValueError(f"sliding-window attention decodes one token per step after the prefill, got {t}")
        n = min(start + 1, self.slots)
        if self.pad is None:
            s = self._slot(start)
            kc[:, :, s:s + 1].copy_(k)
            vc[:, :, s:s + 1].copy_(v)
            return ops.block_sparse_attention(q, kc[:, :, :n], vc[:, :, :n], self._mask(1, n), scale)
        rows = torch.arange(k.shape[0], device=k.device)
        dst = self._slot(start - self.pad)  # (B,) each row's slot for its true position
        kc[rows, :, dst] = k[:, :, 0]
        vc[rows, :, dst] = v[:, :, 0]
        full = start + 1 - int(self.pad.max()) >= self.slots  # every row's ring is full: no masking needed
        m = self._mask(1, n) if full else self._padded_mask(start, 1)
        return ops.block_sparse_attention(q, kc[:, :, :n], vc[:, :, :n], m, scale)


def check_pattern_dtype(pattern: dict[str, int] | None, dtype: torch.dtype) -> None:
    """TypeError at Runner construction when the sliding-window kernel cannot take the model dtype."""
    if pattern is not None and dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"Runner: sliding-window attention (config.slimrt_attention) runs float32 or bfloat16 "
                        f"models, got {str(dtype).replace('torch.', '')}; convert with model.to(torch.bfloat16)")


def new_cache(pattern: dict[str, int] | None, n_layers: int, batch: int, n_kv_heads: int | list[int],
              max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> "KVCache | WindowKVCache":
    """A full static KVCache, or a bounded WindowKVCache when the model carries a sliding-window pattern."""
    if pattern is None:
        return KVCache(n_layers, batch, n_kv_heads, max_len, head_dim, dtype, device)
    return WindowKVCache(n_layers, batch, n_kv_heads, max_len, head_dim, dtype, device, pattern["window"],
                         pattern["num_global"], pattern["block_size"])


# ---- fused projections (runner-side repack; checkpoints stay unchanged) ----

def fuse_linears(modules: list[nn.Module]) -> nn.Module | None:
    """One linear computing the given linears' outputs side by side (their rows concatenated), or None.

    For projections that read the same input (q/k/v): one GEMM of N = sum N_i instead of several
    smaller ones, the input quantized once. Fusable: all nn.Linear, or all Int8Linear with one mode,
    K and the same SmoothQuant vector (or none). Biases missing on some are zeros in the fused one.
    """
    if len(modules) < 2:
        return None
    first = modules[0]
    if all(type(m) is nn.Linear for m in modules):
        w = [m.weight for m in modules]
        if len({(t.shape[1], t.dtype, t.device) for t in w}) != 1:
            return None
        has_bias = any(m.bias is not None for m in modules)
        fused = nn.Linear(w[0].shape[1], sum(t.shape[0] for t in w), bias=has_bias, device=w[0].device,
                          dtype=w[0].dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat(w))
            if has_bias:
                fused.bias.copy_(torch.cat([m.bias if m.bias is not None else w_.new_zeros(w_.shape[0])
                                            for m, w_ in zip(modules, w)]))
        return fused.requires_grad_(False)
    if not all(type(m) is Int8Linear for m in modules):
        return None
    if len({(m.mode, m.in_features, m.w_q.device) for m in modules}) != 1:
        return None
    smooth = [m.smooth for m in modules]
    if any(s is None for s in smooth) != all(s is None for s in smooth):
        return None
    if smooth[0] is not None and not all(torch.equal(s, smooth[0]) for s in smooth[1:]):
        return None
    has_bias = any(m.bias is not None for m in modules)
    bias_dtype = next((m.bias.dtype for m in modules if m.bias is not None), torch.float32)
    n = sum(m.out_features for m in modules)
    fused = Int8Linear(first.in_features, n, bias=has_bias, mode=first.mode, device=first.w_q.device,
                       bias_dtype=bias_dtype, smooth=smooth[0] is not None)
    with torch.no_grad():
        fused.w_q.copy_(torch.cat([m.w_q for m in modules]))
        fused.w_scale.copy_(torch.cat([m.w_scale for m in modules]))
        if has_bias:
            fused.bias.copy_(torch.cat([m.bias.to(bias_dtype) if m.bias is not None
                                        else torch.zeros(m.out_features, dtype=bias_dtype, device=m.w_q.device)
                                        for m in modules]))
        if smooth[0] is not None:
            fused.smooth.copy_(smooth[0])
    fused.invalidate_pack()  # packed on its first call (the native decode step, if it runs, never calls it)
    return fused
