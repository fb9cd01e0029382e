"""Lean forward for the Llama family (Llama, Mistral, Qwen2, Qwen3) and its relatives Gemma (1/2/3)
and Phi-3: RMSNorm, RoPE, GQA, a gated MLP.

Reads the weights of a ``LlamaForCausalLM``-shaped model once and runs prefill and one-token
decode steps against a static KV cache, calling each linear submodule through ``make_linear``.
The relatives differ in a few switches read from the config and the modules present:
- Gemma: norms scale by (1 + w) in fp32, embeddings by sqrt(C), GELU-tanh MLP; Gemma 2 and 3 add
  norms after attention and around the MLP ("sandwich"), a query scale of query_pre_attn_scalar^-0.5,
  sliding-window layers (``layer_types``), and Gemma 2 tanh soft-capping of attention scores and
  logits; Gemma 3 normalizes q and k per head and has a RoPE of its own for sliding layers.
- Phi-3: one fused qkv_proj and one fused gate_up_proj (split here), partial rotary dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt.attention import read_pattern
from slimrt.models._common import (Batch, KVCache, WindowKVCache, attention, check_pattern_dtype, make_linear,
                                   make_linear_act, new_cache)
from slimrt.models.policy import KernelPolicy

LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")
MODEL_TYPES = LLAMA_TYPES + GEMMA_TYPES + ("phi3",)


def _rope_inv_freq(config, layer_type: str | None = None) -> tuple[Tensor, float]:
    """inv_freq (D/2,) float32 and the attention scaling, from the config's rope parameters (those of
    ``layer_type`` where the config keys them by layer type, as Gemma 3's)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if layer_type is not None:
        params = dict(params.get(layer_type) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if rope_type == "default":
        factor = float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0))
        dim = int(head_dim * factor)
        return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim), 1.0
    if rope_type in ("dynamic", "longrope"):  # inv_freq changes with sequence length
        raise ValueError(f"Runner: rope_type={rope_type!r} is not supported; supported: default, linear, yarn, llama3")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"Runner: unknown rope_type={rope_type!r} in the model config")
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), **kwargs)
    return inv_freq.float(), float(scaling)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm as HF computes it: normalized in fp32, rounded to x.dtype, then scaled by weight."""
    if x.dtype == torch.float32:  # one fused call; identical math
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _gemma_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Gemma's RMSNorm: normalized and scaled by (1 + weight) in fp32, then rounded to x.dtype."""
    return (F.rms_norm(x.float(), (x.shape[-1],), None, eps) * (1.0 + weight.float())).to(x.dtype)


def _softcap(x: Tensor, cap: float) -> Tensor:
    return torch.tanh(x / cap) * cap


def _capped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None,
                      cap: float) -> Tensor:
    """Gemma 2's attention with tanh soft-capped scores (SDPA cannot cap): q (B, H, T, D), k, v
    (B, Hkv, L, D), mask (B, 1, T, L) bool or None (then causal, keys aligned to the end) -> (B, H, T, D)."""
    b, h, t, d = q.shape
    k = k.repeat_interleave(h // k.shape[1], dim=1)
    v = v.repeat_interleave(h // v.shape[1], dim=1)
    scores = _softcap(q @ k.transpose(-1, -2) * (scale if scale is not None else d ** -0.5), cap)  # (B, H, T, L)
    if mask is None:
        n = k.shape[2]
        mask = torch.ones(t, n, dtype=torch.bool, device=q.device).tril_(n - t)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.float().softmax(dim=-1).to(q.dtype)) @ v


class _Layer:
    """One decoder block's callables and norms (``None``: the family has no such part)."""

    __slots__ = ("ln1", "qkv", "o_proj", "qk_norm", "post_attn", "ln2", "mlp", "post_mlp", "window", "rope")

    def __init__(self, **parts) -> None:
        for name in self.__slots__:
            setattr(self, name, parts.get(name))


def _split(lin, sizes: tuple[int, ...]):
    """A fused projection (Phi-3's qkv_proj / gate_up_proj) as its parts: column views of one output."""
    return lambda h: lin(h).split(sizes, dim=-1)


class LlamaLean:
    """Decoder forward: ``forward(ids, batch, cache, start)`` -> logits of the last position."""

    kind = "decoder"

    def __init__(self, model: nn.Module, policy: KernelPolicy) -> None:
        cfg = model.config
        base = model.model
        mt = cfg.model_type
        self.config = cfg
        # models.decode_step builds the native batch-1 step per family: Llama's covers the Llama types only
        self.family = "llama" if mt in LLAMA_TYPES else mt
        gemma = mt in GEMMA_TYPES
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.max_positions = int(cfg.max_position_embeddings)
        self.vocab_size = int(cfg.vocab_size)
        self.embed = base.embed_tokens.weight  # (V, C)
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.eps = float(cfg.rms_norm_eps)
        self.norm = _gemma_norm if gemma else _rms_norm
        # Gemma scales the embeddings by sqrt(C), rounded to the model dtype as transformers does.
        self.embed_scale = torch.tensor(cfg.hidden_size ** 0.5, dtype=self.dtype) if gemma else None
        scalar = getattr(cfg, "query_pre_attn_scalar", None) if mt != "gemma" else None
        self.scale = float(scalar) ** -0.5 if scalar else None  # None: SDPA's own 1/sqrt(D)
        self.attn_cap = getattr(cfg, "attn_logit_softcapping", None) if gemma else None
        self.final_cap = getattr(cfg, "final_logit_softcapping", None) if gemma else None
        layer_types = list(getattr(cfg, "layer_types", None) or []) if mt in ("gemma2", "gemma3_text") else []
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        if window and not layer_types:  # every layer slides: full attention equals it up to the window
            self.max_positions = min(self.max_positions, int(window))
        self.norm_w = base.norm.weight
        # RoPE per layer type where the config keys its parameters so (Gemma 3: sliding layers' own base)
        rope_params = getattr(cfg, "rope_parameters", None)
        keyed = isinstance(rope_params, dict) and bool(layer_types) and all(t in rope_params for t in layer_types)
        rope_keys = sorted(set(layer_types)) if keyed else [None]
        self.ropes = {key: _rope_inv_freq(cfg, key) for key in rope_keys}
        self.layers: list[_Layer] = []
        for i, layer in enumerate(base.layers):
            at, mlp = layer.self_attn, layer.mlp
            if hasattr(at, "qkv_proj"):  # Phi-3: one fused projection
                q_size = self.n_heads * self.head_dim
                kv_size = (at.qkv_proj.out_features - q_size) // 2
                qkv = _split(make_linear(at.qkv_proj, policy), (q_size, kv_size, kv_size))
            else:
                q, k, v = (make_linear(m, policy) for m in (at.q_proj, at.k_proj, at.v_proj))
                qkv = (lambda q, k, v: lambda h: (q(h), k(h), v(h)))(q, k, v)
            act_name = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
            down = make_linear(mlp.down_proj, policy)
            if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate and up in one projection, gate first
                gate_up, act = make_linear(mlp.gate_up_proj, policy), mlp.activation_fn
                ff = _gated(gate_up, act, down)
            else:
                gate_act = make_linear_act(mlp.gate_proj, policy, act_name, mlp.act_fn)
                up = make_linear(mlp.up_proj, policy)
                ff = (lambda g, u, d: lambda h: d(g(h) * u(h)))(gate_act, up, down)  # act(gate) fused where W8A8
            sandwich = hasattr(layer, "pre_feedforward_layernorm")  # Gemma 2/3
            lt = layer_types[i] if i < len(layer_types) else None
            self.layers.append(_Layer(
                ln1=layer.input_layernorm.weight, qkv=qkv, o_proj=make_linear(at.o_proj, policy),
                qk_norm=(at.q_norm.weight, at.k_norm.weight) if hasattr(at, "q_norm") else None,
                post_attn=layer.post_attention_layernorm.weight if sandwich else None,
                ln2=(layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm).weight,
                mlp=ff, post_mlp=layer.post_feedforward_layernorm.weight if sandwich else None,
                window=int(window) if lt == "sliding_attention" and window else None,
                rope=lt if keyed else None))
        self.lm_head = make_linear(model.lm_head, policy)
        # KV heads per layer: prune_heads may leave different counts in different layers.
        if all(hasattr(layer.self_attn, "k_proj") for layer in base.layers):
            self.kv_heads = [layer.self_attn.k_proj.out_features // self.head_dim for layer in base.layers]
        else:
            self.kv_heads = [self.n_kv] * len(self.layers)
        self.inv_freq, self.rope_scaling = self.ropes[rope_keys[0]]
        self.pattern = read_pattern(cfg)  # sliding window + sinks (recipe method sparse_attention) or None
        check_pattern_dtype(self.pattern, self.dtype)
        if self.pattern is not None and (self.attn_cap or any(layer.window for layer in self.layers)):
            raise ValueError(f"Runner: config.slimrt_attention on a {mt} model with its own sliding-window layers "
                             "or soft-capped attention is not supported")

    def new_cache(self, batch: int, max_len: int) -> KVCache | WindowKVCache:
        return new_cache(self.pattern, len(self.layers), batch, self.kv_heads, max_len, self.head_dim, self.dtype,
                         self.embed.device)

    def prepare(self, batch: Batch):
        """cos, signed sin (B, 1, max_len, D) for every slot of the call, computed once (fp32 like HF);
        a dict of them by layer type where layers have RoPEs of their own (Gemma 3).

        rotate_half(x) * sin == roll(x, D/2) * cat(-sin, sin) bit for bit, one kernel fewer per call.
        """
        tables = {key: self._tables(batch, inv_freq, scaling) for key, (inv_freq, scaling) in self.ropes.items()}
        return tables[None] if None in tables else tables

    def _tables(self, batch: Batch, inv_freq: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
        freqs = batch.positions.float().unsqueeze(-1) * inv_freq.to(batch.positions.device)  # (B, L, D/2)
        cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1).unsqueeze(1) * scaling  # (B, 1, L, D)
        sin = freqs.sin() * scaling
        sin = torch.cat((-sin, sin), dim=-1).unsqueeze(1)
        return cos.to(self.dtype), sin.to(self.dtype)

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot = cos.shape[-1]
        if rot == x.shape[-1]:
            return x * cos + x.roll(rot // 2, dims=-1) * sin
        xr = x[..., :rot]
        return torch.cat((xr * cos + xr.roll(rot // 2, dims=-1) * sin, x[..., rot:]), dim=-1)

    def _band(self, mask: Tensor | None, start: int, t: int, window: int, device: torch.device) -> Tensor:
        """(B or 1, 1, T, start+T) bool: causal keys within ``window`` of each query (slots differ by
        positions: left padding shifts both), and the padding mask if any."""
        qs = torch.arange(start, start + t, device=device).view(t, 1)
        ks = torch.arange(start + t, device=device).view(1, -1)
        band = ((ks <= qs) & (qs - ks < window))[None, None]
        return band if mask is None else band & mask

    def forward(self, ids: Tensor, rope, cache: KVCache, start: int, mask: Tensor | None, causal: bool) -> Tensor:
        """ids (B, T) at slots [start, start+T); mask (B, 1, T, start+T) or None -> logits (B, V) fp32."""
        b, t = ids.shape
        tables = rope if isinstance(rope, dict) else {None: rope}
        tables = {key: (c[:, :, start:start + t], s[:, :, start:start + t]) for key, (c, s) in tables.items()}
        x = F.embedding(ids, self.embed)  # (B, T, C)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        norm, eps = self.norm, self.eps
        for i, layer in enumerate(self.layers):
            h = norm(x, layer.ln1, eps)
            q, k, v = layer.qkv(h)
            q = q.view(b, t, -1, self.head_dim)  # -1: per-layer head counts (pruning)
            k = k.view(b, t, -1, self.head_dim)
            v = v.reshape(b, t, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
            if layer.qk_norm is not None:  # Qwen3, Gemma 3: a norm over each head before RoPE
                q = norm(q, layer.qk_norm[0], eps)
                k = norm(k, layer.qk_norm[1], eps)
            cos, sin = tables[layer.rope]
            q = self._rope(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
            k = self._rope(k.transpose(1, 2), cos, sin)
            if layer.window is None and self.attn_cap is None:
                o = cache.attend(i, start, q, k, v, mask, causal, self.scale)  # (B, H, T, D); writes k, v
            else:
                k_all, v_all = cache.update(i, start, k, v)
                m = mask
                if layer.window is not None and start + t > layer.window:
                    m = self._band(mask, start, t, layer.window, ids.device)
                if self.attn_cap is not None:
                    o = _capped_attention(q, k_all, v_all, m, self.scale, self.attn_cap)
                else:
                    o = attention(q, k_all, v_all, m, causal and m is None, self.scale)  # (B, H, T, D)
            o = layer.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            x = x + (o if layer.post_attn is None else norm(o, layer.post_attn, eps))
            f = layer.mlp(norm(x, layer.ln2, eps))
            x = x + (f if layer.post_mlp is None else norm(f, layer.post_mlp, eps))
        h = norm(x[:, -1], self.norm_w, eps)  # only the last position is sampled
        logits = self.lm_head(h).float()
        return logits if self.final_cap is None else _softcap(logits, self.final_cap)


def _gated(gate_up, act, down):
    """Phi-3's MLP: down(act(gate) * up) with gate and up the halves of one projection's output."""
    def call(h: Tensor) -> Tensor:
        gate, up = gate_up(h).chunk(2, dim=-1)
        return down(act(gate) * up)

    return call
