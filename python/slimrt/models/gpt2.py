"""Lean forward for the GPT-2 family: learned positions, pre-LayerNorm blocks, fused QKV, GELU MLP."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from slimrt.attention import read_pattern
from slimrt.models._common import Batch, KVCache, WindowKVCache, check_pattern_dtype, make_linear, make_linear_act, new_cache
from slimrt.models.policy import KernelPolicy

MODEL_TYPES = ("gpt2",)


class GPT2Lean:
    """Decoder forward: ``forward(ids, positions, cache, start)`` -> logits of the last position."""

    kind = "decoder"
    family = "gpt2"  # models.decode_step builds the native batch-1 step per family

    def __init__(self, model: nn.Module, policy: KernelPolicy) -> None:
        cfg = model.config
        tr = model.transformer
        self.config = cfg
        self.n_heads = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.max_positions = int(cfg.n_positions)
        self.vocab_size = int(cfg.vocab_size)
        self.wte, self.wpe = tr.wte.weight, tr.wpe.weight  # (V, C), (max_positions, C)
        self.dtype, self.device = self.wte.dtype, self.wte.device
        self.eps = float(cfg.layer_norm_epsilon)
        self.ln_f = (tr.ln_f.weight, tr.ln_f.bias)
        self.layers = []
        for i, blk in enumerate(tr.h):
            scale = 1.0 / math.sqrt(self.head_dim) if cfg.scale_attn_weights else 1.0
            if cfg.scale_attn_by_inverse_layer_idx:
                scale /= i + 1
            self.layers.append((
                (blk.ln_1.weight, blk.ln_1.bias), make_linear(blk.attn.c_attn, policy),
                make_linear(blk.attn.c_proj, policy), (blk.ln_2.weight, blk.ln_2.bias),
                make_linear_act(blk.mlp.c_fc, policy, getattr(cfg, "activation_function", None), blk.mlp.act),
                make_linear(blk.mlp.c_proj, policy), scale,
            ))
        self.lm_head = make_linear(model.lm_head, policy)
        self.pattern = read_pattern(cfg)  # sliding window + sinks (recipe method sparse_attention) or None
        check_pattern_dtype(self.pattern, self.dtype)

    def new_cache(self, batch: int, max_len: int) -> KVCache | WindowKVCache:
        return new_cache(self.pattern, len(self.layers), batch, self.n_heads, max_len, self.head_dim, self.dtype,
                         self.wte.device)

    def prepare(self, batch: Batch) -> Tensor:
        """Position embeddings (B, max_len, C) for every slot of the call, gathered once."""
        return F.embedding(batch.positions, self.wpe)

    def forward(self, ids: Tensor, pos_emb: Tensor, cache: KVCache, start: int,
                mask: Tensor | None, causal: bool) -> Tensor:
        """ids (B, T) at slots [start, start+T); mask (B, 1, T, start+T) or None -> logits (B, V) fp32."""
        b, t = ids.shape
        x = F.embedding(ids, self.wte) + pos_emb[:, start:start + t]  # (B, T, C)
        c = x.shape[-1]
        for i, (ln1, c_attn, c_proj, ln2, c_fc_act, mlp_proj, scale) in enumerate(self.layers):
            h = F.layer_norm(x, (c,), ln1[0], ln1[1], self.eps)
            qkv = c_attn(h).view(b, t, 3, self.n_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
            o = cache.attend(i, start, q, k, v, mask, causal, scale)  # (B, H, T, D); writes k, v into the cache
            x = x + c_proj(o.transpose(1, 2).reshape(b, t, c))
            h = F.layer_norm(x, (c,), ln2[0], ln2[1], self.eps)
            x = x + mlp_proj(c_fc_act(h))  # the activation fused into c_fc's epilogue where it runs W8A8
        h = F.layer_norm(x[:, -1], (c,), self.ln_f[0], self.ln_f[1], self.eps)
        return self.lm_head(h).float()
