"""Lean forward for BERT-shaped encoders: BERT, RoBERTa / XLM-RoBERTa, DistilBERT and MPNet.

All four are post-LayerNorm blocks (attention, add & norm, FFN, add & norm) over learned absolute
positions; they differ in module names (``Layout``), in where positions start (RoBERTa and MPNet
count from ``pad_token_id + 1``), in token-type embeddings (BERT, RoBERTa) and in MPNet's relative
position bias added to every layer's attention scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt import ops
from slimrt.models._common import fuse_linears, make_linear, make_linear_act
from slimrt.models.policy import KernelPolicy


@dataclass(frozen=True)
class Layout:
    """Where an encoder family keeps its parts (dotted names inside the model / one layer)."""

    layers: str  # the ModuleList of blocks
    q: str
    k: str
    v: str
    o: str
    ln1: str  # after attention
    fc1: str
    fc2: str
    ln2: str  # after the FFN
    act: str  # the FFN activation module, called on fc1's output
    act_key: str  # config key of its name (the fused W8A8 epilogue)
    position_offset: bool = False  # positions start at pad_token_id + 1 (RoBERTa, MPNet)
    relative_bias: str | None = None  # MPNet: the bucketed relative-position Embedding (buckets, heads)


_BERT = Layout("encoder.layer", "attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
               "output.LayerNorm", "intermediate.intermediate_act_fn", "hidden_act")
_ROBERTA = Layout(**{**_BERT.__dict__, "position_offset": True})
_DISTILBERT = Layout("transformer.layer", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                     "attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm",
                     "ffn.activation", "activation")
_MPNET = Layout("encoder.layer", "attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
                "attention.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm",
                "intermediate.intermediate_act_fn", "hidden_act", position_offset=True,
                relative_bias="encoder.relative_attention_bias")

LAYOUTS = {"bert": _BERT, "roberta": _ROBERTA, "xlm-roberta": _ROBERTA, "camembert": _ROBERTA,
           "distilbert": _DISTILBERT, "mpnet": _MPNET}
MODEL_TYPES = tuple(LAYOUTS)


def _base(model: nn.Module) -> nn.Module:
    """The encoder under a task head (BertForMaskedLM.bert), or the model itself."""
    prefix = getattr(model, "base_model_prefix", None)
    for name in ((prefix,) if isinstance(prefix, str) and prefix else ()) + ("bert", "roberta", "distilbert", "mpnet"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module) and hasattr(sub, "embeddings"):
            return sub
    return model


def _norm(ln: nn.Module) -> tuple[Tensor, Tensor | None, float]:
    return ln.weight, ln.bias, float(ln.eps)


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int = 128) -> Tensor:
    """MPNet's (T5-style, bidirectional) bucket of each key - query offset, as transformers computes it."""
    num_buckets //= 2
    n = -relative
    ret = (n < 0).long() * num_buckets
    n = n.abs()
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    return ret + torch.where(n < max_exact, n, large.clamp(max=num_buckets - 1))


class BertLean:
    """Encoder forward: ``forward(input_ids, attention_mask)`` -> last hidden state (B, T, C)."""

    kind = "encoder"

    def __init__(self, model: nn.Module, policy: KernelPolicy) -> None:
        base = _base(model)
        cfg = base.config
        lay = LAYOUTS[cfg.model_type]
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"Runner: {cfg.model_type} position_embedding_type={cfg.position_embedding_type!r} is "
                             "not supported; expected 'absolute'")
        if getattr(cfg, "slimrt_attention", None) is not None:
            raise ValueError("Runner: config.slimrt_attention (sliding-window attention) is supported for decoders "
                             "only (Llama family, GPT-2); remove it to run this encoder densely")
        self.config = cfg
        emb = base.embeddings
        self.word, self.pos = emb.word_embeddings.weight, emb.position_embeddings.weight
        # single-segment input: token type 0 (DistilBERT and MPNet have no token types)
        types = getattr(emb, "token_type_embeddings", None)
        self.type0 = types.weight[0] if types is not None else None
        self.emb_ln = _norm(emb.LayerNorm)
        # RoBERTa numbers a text's tokens from pad_token_id + 1 (its first position rows are unused).
        self.pos_offset = int(cfg.pad_token_id) + 1 if lay.position_offset else 0
        self.max_positions = int(cfg.max_position_embeddings) - self.pos_offset
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.dtype, self.device = self.word.dtype, self.word.device
        self.rel_bias = None
        if lay.relative_bias is not None:
            self.rel_bias = base.get_submodule(lay.relative_bias).weight  # (buckets, H)
        self.layers = []
        for layer in base.get_submodule(lay.layers):
            q, k, v = (layer.get_submodule(n) for n in (lay.q, lay.k, lay.v))
            # q, k and v read the same x: one fused projection (one GEMM, x quantized once) when the
            # three modules allow it, else three calls.
            # A tuned policy with rules for these shapes keeps them separate (the rules name them).
            tuned = any((m.out_features, m.in_features) in policy.per_shape for m in (q, k, v)
                        if hasattr(m, "out_features"))
            qkv = None if tuned else fuse_linears([q, k, v])
            sizes = (q.out_features, k.out_features, v.out_features)
            self.layers.append((
                (make_linear(qkv, policy), sizes) if qkv is not None else
                (make_linear(q, policy), make_linear(k, policy), make_linear(v, policy)),
                make_linear(layer.get_submodule(lay.o), policy), _norm(layer.get_submodule(lay.ln1)),
                make_linear_act(layer.get_submodule(lay.fc1), policy, getattr(cfg, lay.act_key, None),
                                layer.get_submodule(lay.act)),
                make_linear(layer.get_submodule(lay.fc2), policy), _norm(layer.get_submodule(lay.ln2)),
            ))

    @torch.inference_mode()
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids (B, T) long, attention_mask (B, T) 0/1 -> hidden (B, T, C) in the model dtype.

        Padding is removed before the first layer: the real tokens of every row are packed back to
        back (N, C), every linear and norm runs on N rows instead of B * T, and attention runs within
        each sequence (slimrt.ops.varlen_attention). A token's position id is its slot in the padded
        row, as Hugging Face BERT numbers them (with right padding, which the runner uses, that is its
        position in the unpadded text). Padded slots of the returned hidden state are zeros (pooling
        ignores them through the mask).
        """
        b, t = input_ids.shape
        if attention_mask.shape != (b, t):
            raise ValueError(f"BertLean: attention_mask has shape {tuple(attention_mask.shape)}, expected {(b, t)}")
        keep = attention_mask.reshape(-1) != 0  # (B*T,) bool
        lens = keep.view(b, t).sum(dim=1)
        cu = torch.zeros(b + 1, dtype=torch.int64, device=input_ids.device)
        torch.cumsum(lens, 0, out=cu[1:])
        full = bool(keep.all())
        ids = input_ids.reshape(-1) if full else input_ids.reshape(-1)[keep]
        pos = torch.arange(self.pos_offset, self.pos_offset + t, device=input_ids.device).repeat(b)
        pos = pos if full else pos[keep]
        x = F.embedding(ids, self.word) + F.embedding(pos, self.pos)  # (N, C)
        if self.type0 is not None:
            x = x + self.type0
        n, c = x.shape
        if n == 0:  # nothing but padding: the padded slots are zeros
            return x.new_zeros((b, t, c))
        x = F.layer_norm(x, (c,), self.emb_ln[0], self.emb_ln[1], self.emb_ln[2])
        bias = None if self.rel_bias is None else self._relative_bias(t, keep.view(b, t))
        for proj, o_lin, ln1, fc1_act, fc2, ln2 in self.layers:
            if len(proj) == 2:  # fused: column views of one (N, Nq + Nk + Nv) output, no copies
                q, k, v = proj[0](x).split(proj[1], dim=-1)
            else:
                q, k, v = (lin(x) for lin in proj)
            # (N, H, D) each; -1: pruned heads
            q, k, v = (t.view(n, -1, self.head_dim) for t in (q, k, v))
            if bias is None:
                o = ops.varlen_attention(q, k, v, cu).view(n, -1)
            else:
                o = self._biased_attention(q, k, v, keep, b, t, bias).view(n, -1)
            x = F.layer_norm(o_lin(o) + x, (c,), ln1[0], ln1[1], ln1[2])
            x = F.layer_norm(fc2(fc1_act(x)) + x, (c,), ln2[0], ln2[1], ln2[2])
        if full:
            return x.view(b, t, c)
        out = x.new_zeros((b * t, c))
        out[keep] = x
        return out.view(b, t, c)


    def _relative_bias(self, t: int, keep: Tensor) -> Tensor:
        """MPNet: (B, H, T, T) additive scores, the relative-position bias plus -inf at padding keys."""
        slots = torch.arange(t, device=keep.device)
        bucket = relative_position_bucket(slots[None, :] - slots[:, None], self.rel_bias.shape[0])  # (T, T)
        bias = F.embedding(bucket, self.rel_bias).permute(2, 0, 1).unsqueeze(0).to(self.dtype)  # (1, H, T, T)
        pad = torch.zeros(keep.shape, dtype=self.dtype, device=keep.device).masked_fill_(~keep, float("-inf"))
        return bias + pad[:, None, None, :]

    def _biased_attention(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor, b: int, t: int,
                          bias: Tensor) -> Tensor:
        """Attention with an additive bias: packed (N, H, D) -> padded (B, H, T, D) for SDPA -> packed."""
        def padded(x: Tensor) -> Tensor:
            out = x.new_zeros((b * t,) + x.shape[1:])
            out[keep] = x
            return out.view(b, t, *x.shape[1:]).transpose(1, 2)

        o = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=bias)  # (B, H, T, D)
        return o.transpose(1, 2).reshape(b * t, *q.shape[1:])[keep]


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Sentence-transformers pooling. hidden (B, T, C), attention_mask (B, T) -> (B, C) float32.

    mean: sum of real tokens / count; cls: the first token; max: per-channel max over real tokens;
    mean_sqrt_len: sum / sqrt(count).
    """
    h = hidden.float()
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    if mode == "cls":
        return h[:, 0]
    if mode == "max":
        return h.masked_fill(m == 0, float("-inf")).amax(dim=1)
    total = (h * m).sum(dim=1)
    count = m.sum(dim=1).clamp(min=1e-9)
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len":
        return total / torch.sqrt(count)
    raise ValueError(f"pool: mode={mode!r} is not one of mean, cls, max, mean_sqrt_len")
