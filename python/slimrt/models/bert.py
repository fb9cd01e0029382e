"""Lean forward for the BERT family (BertModel and BertFor*): post-LayerNorm encoder blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt import ops
from slimrt.models._common import fuse_linears, make_linear, make_linear_act
from slimrt.models.policy import KernelPolicy

MODEL_TYPES = ("bert",)


class BertLean:
    """Encoder forward: ``forward(input_ids, attention_mask)`` -> last hidden state (B, T, C)."""

    kind = "encoder"

    def __init__(self, model: nn.Module, policy: KernelPolicy) -> None:
        bert = model.bert if hasattr(model, "bert") else model
        cfg = bert.config
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"Runner: BERT position_embedding_type={cfg.position_embedding_type!r} is not "
                             "supported; expected 'absolute'")
        if getattr(cfg, "slimrt_attention", None) is not None:
            raise ValueError("Runner: config.slimrt_attention (sliding-window attention) is supported for decoders "
                             "only (Llama family, GPT-2); remove it to run this BERT encoder densely")
        self.config = cfg
        emb = bert.embeddings
        self.word, self.pos = emb.word_embeddings.weight, emb.position_embeddings.weight
        self.type0 = emb.token_type_embeddings.weight[0]  # single-segment input: token type 0
        self.emb_ln = (emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
        self.max_positions = int(cfg.max_position_embeddings)
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.dtype, self.device = self.word.dtype, self.word.device
        self.layers = []
        for layer in bert.encoder.layer:
            sa, so = layer.attention.self, layer.attention.output
            # q, k and v read the same x: one fused projection (one GEMM, x quantized once) when the
            # three modules allow it, else three calls.
            # A tuned policy with rules for these shapes keeps them separate (the rules name them).
            tuned = any((m.out_features, m.in_features) in policy.per_shape for m in (sa.query, sa.key, sa.value)
                        if hasattr(m, "out_features"))
            qkv = None if tuned else fuse_linears([sa.query, sa.key, sa.value])
            sizes = (sa.query.out_features, sa.key.out_features, sa.value.out_features)
            self.layers.append((
                (make_linear(qkv, policy), sizes) if qkv is not None else
                (make_linear(sa.query, policy), make_linear(sa.key, policy), make_linear(sa.value, policy)),
                make_linear(so.dense, policy), (so.LayerNorm.weight, so.LayerNorm.bias, so.LayerNorm.eps),
                make_linear_act(layer.intermediate.dense, policy, getattr(cfg, "hidden_act", None),
                                layer.intermediate.intermediate_act_fn),
                make_linear(layer.output.dense, policy),
                (layer.output.LayerNorm.weight, layer.output.LayerNorm.bias, layer.output.LayerNorm.eps),
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
        pos = torch.arange(t, device=input_ids.device).repeat(b)
        pos = pos if full else pos[keep]
        x = F.embedding(ids, self.word) + F.embedding(pos, self.pos) + self.type0  # (N, C)
        n, c = x.shape
        if n == 0:  # nothing but padding: the padded slots are zeros
            return x.new_zeros((b, t, c))
        x = F.layer_norm(x, (c,), self.emb_ln[0], self.emb_ln[1], self.emb_ln[2])
        for proj, o_lin, ln1, fc1_act, fc2, ln2 in self.layers:
            if len(proj) == 2:  # fused: column views of one (N, Nq + Nk + Nv) output, no copies
                q, k, v = proj[0](x).split(proj[1], dim=-1)
            else:
                q, k, v = (lin(x) for lin in proj)
            # (N, H, D) each; -1: pruned heads
            q, k, v = (t.view(n, -1, self.head_dim) for t in (q, k, v))
            o = ops.varlen_attention(q, k, v, cu).view(n, -1)
            x = F.layer_norm(o_lin(o) + x, (c,), ln1[0], ln1[1], ln1[2])
            x = F.layer_norm(fc2(fc1_act(x)) + x, (c,), ln2[0], ln2[1], ln2[2])
        if full:
            return x.view(b, t, c)
        out = x.new_zeros((b * t, c))
        out[keep] = x
        return out.view(b, t, c)


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
