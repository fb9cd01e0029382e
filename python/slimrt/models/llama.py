"""Lean forward for the Llama family (Llama, Mistral, Qwen2, Qwen3): RMSNorm, RoPE, GQA, SwiGLU.

Reads the weights of a ``LlamaForCausalLM``-shaped model once and runs prefill and one-token
decode steps against a static KV cache, calling each linear submodule through ``make_linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt.attention import read_pattern
from slimrt.models._common import Batch, KVCache, WindowKVCache, check_pattern_dtype, make_linear, make_linear_act, new_cache
from slimrt.models.policy import KernelPolicy

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _rope_inv_freq(config) -> tuple[Tensor, float]:
    """inv_freq (D/2,) float32 and the attention scaling, from the config's rope parameters."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if rope_type == "default":
        dim = int(head_dim * float(params.get("partial_rotary_factor", 1.0)))
        return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim), 1.0
    if rope_type in ("dynamic", "longrope"):  # inv_freq changes with sequence length
        raise ValueError(f"Runner: rope_type={rope_type!r} is not supported; supported: default, linear, yarn, llama3")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"Runner: unknown rope_type={rope_type!r} in the model config")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm as HF computes it: normalized in fp32, rounded to x.dtype, then scaled by weight."""
    if x.dtype == torch.float32:  # one fused call; identical math
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


class LlamaLean:
    """Decoder forward: ``forward(ids, batch, cache, start)`` -> logits of the last position."""

    kind = "decoder"
    family = "llama"  # models.decode_step builds the native batch-1 step per family

    def __init__(self, model: nn.Module, policy: KernelPolicy) -> None:
        cfg = model.config
        base = model.model
        self.config = cfg
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.max_positions = int(cfg.max_position_embeddings)
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        if window:  # full attention equals sliding-window attention up to the window: cap the context there
            self.max_positions = min(self.max_positions, int(window))
        self.vocab_size = int(cfg.vocab_size)
        self.embed = base.embed_tokens.weight  # (V, C)
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.eps = float(cfg.rms_norm_eps)
        self.norm_w = base.norm.weight
        self.layers = []
        for layer in base.layers:
            at, mlp = layer.self_attn, layer.mlp
            qk_norm = (at.q_norm.weight, at.k_norm.weight) if hasattr(at, "q_norm") else None
            self.layers.append((
                layer.input_layernorm.weight, make_linear(at.q_proj, policy), make_linear(at.k_proj, policy),
                make_linear(at.v_proj, policy), make_linear(at.o_proj, policy), qk_norm,
                layer.post_attention_layernorm.weight,
                make_linear_act(mlp.gate_proj, policy, getattr(cfg, "hidden_act", None), mlp.act_fn),
                make_linear(mlp.up_proj, policy), make_linear(mlp.down_proj, policy),
            ))
        self.lm_head = make_linear(model.lm_head, policy)
        # KV heads per layer: prune_heads may leave different counts in different layers.
        self.kv_heads = [layer.self_attn.k_proj.out_features // self.head_dim for layer in base.layers]
        self.inv_freq, self.rope_scaling = _rope_inv_freq(cfg)
        self.pattern = read_pattern(cfg)  # sliding window + sinks (recipe method sparse_attention) or None
        check_pattern_dtype(self.pattern, self.dtype)

    def new_cache(self, batch: int, max_len: int) -> KVCache | WindowKVCache:
        return new_cache(self.pattern, len(self.layers), batch, self.kv_heads, max_len, self.head_dim, self.dtype,
                         self.embed.device)

    def prepare(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """cos, signed sin (B, 1, max_len, D) for every slot of the call, computed once (fp32 like HF).

        rotate_half(x) * sin == roll(x, D/2) * cat(-sin, sin) bit for bit, one kernel fewer per call.
        """
        freqs = batch.positions.float().unsqueeze(-1) * self.inv_freq.to(batch.positions.device)  # (B, L, D/2)
        cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1).unsqueeze(1) * self.rope_scaling  # (B, 1, L, D)
        sin = freqs.sin() * self.rope_scaling
        sin = torch.cat((-sin, sin), dim=-1).unsqueeze(1)
        return cos.to(self.dtype), sin.to(self.dtype)

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot = cos.shape[-1]
        if rot == x.shape[-1]:
            return x * cos + x.roll(rot // 2, dims=-1) * sin
        xr = x[..., :rot]
        return torch.cat((xr * cos + xr.roll(rot // 2, dims=-1) * sin, x[..., rot:]), dim=-1)

    def forward(self, ids: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache, start: int,
                mask: Tensor | None, causal: bool) -> Tensor:
        """ids (B, T) at slots [start, start+T); mask (B, 1, T, start+T) or None -> logits (B, V) fp32."""
        b, t = ids.shape
        cos, sin = rope[0][:, :, start:start + t], rope[1][:, :, start:start + t]  # (B, 1, T, D)
        x = F.embedding(ids, self.embed)  # (B, T, C)
        for i, (ln1, q_proj, k_proj, v_proj, o_proj, qk_norm, ln2, gate_act, up, down) in enumerate(self.layers):
            h = _rms_norm(x, ln1, self.eps)
            q = q_proj(h).view(b, t, -1, self.head_dim)  # -1: per-layer head counts (pruning)
            k = k_proj(h).view(b, t, -1, self.head_dim)
            v = v_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
            if qk_norm is not None:  # Qwen3: RMSNorm over each head before RoPE
                q = _rms_norm(q, qk_norm[0], self.eps)
                k = _rms_norm(k, qk_norm[1], self.eps)
            q = self._rope(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
            k = self._rope(k.transpose(1, 2), cos, sin)
            o = cache.attend(i, start, q, k, v, mask, causal)  # (B, H, T, D); writes k, v into the cache
            x = x + o_proj(o.transpose(1, 2).reshape(b, t, -1))
            h = _rms_norm(x, ln2, self.eps)
            x = x + down(gate_act(h) * up(h))  # act(gate(h)), fused into gate's epilogue where it runs W8A8
        h = _rms_norm(x[:, -1], self.norm_w, self.eps)  # only the last position is sampled
        return self.lm_head(h).float()
