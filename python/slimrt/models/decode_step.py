"""The native decode step: one C++ call per token (per batch of rows) for the runner's hot loop.

``NativeDecoder.build(model, policy, family)`` reads a Llama- or GPT-2-family model once and builds a
``slimrt._C.DecodePlan`` (csrc/decode_step/decode_step.h): per layer the norms, a fused q/k/v
int8 weight (q_proj, k_proj and v_proj rows concatenated: one kernel call instead of three), the
output projection, a fused gate/up weight (Llama) and the down projection. Each generate call opens
a ``session`` over its KV cache and position tables; ``session.step(tok, slot)`` then runs a whole
decode step (embedding to logits, every row of the batch) in C++ with no PyTorch op on the way.

Why: at batch 1 the int8 weights of a 12-layer 768-wide model stream in ~1.3-2.5 ms per token,
while the eager step pays ~2-3 ms of Python and PyTorch dispatch on top (about 200 small ops).

The reference is the eager lean forward (LlamaLean.forward / GPT2Lean.forward at T = 1): the
linears are the same int8_w8_linear (or, for W4Linear, w4_linear) kernel (fusing rows does not change any output column's
arithmetic, so they match bit for bit); norms, RoPE, attention, the activation and the greedy
argmax are fp32 kernels (AVX-512 or portable) whose last bits differ from PyTorch's
(tests/test_decode_step.py bounds this at 1e-5 of the largest logit; measured <= 5e-7).

Only the common case is native; for anything else ``build`` returns None and the reason, and the
runner keeps the eager step: float32 weights on CPU, every
linear an Int8Linear whose kernel at M = 1 is "w8" or a W4Linear (a w4 body with
an int8 head mixes them; the parts of a fused q/k/v or gate/up are of one kind), a full KV cache (no
sliding-window pattern), SiLU / GELU activations, the CPU ops served by the native kernels
(SLIMRT_BACKEND=auto with the extension built; the step only stands in for calls those kernels
would serve), and not the scalar ISA where fused weights exist only packed. A left-padded batch of
B rows decodes natively when every linear's kernel at M = B is "w8" (``max_batch``); the prefill
of a single unpadded prompt of T tokens runs natively when it is "w8" at M = T (``max_prefill``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from slimrt import _native, ops
from slimrt.attention import read_pattern
from slimrt.models.policy import KernelPolicy
from slimrt.nn.int8_linear import Int8Linear
from slimrt.nn.w4_linear import W4Linear

NORM_RMS, NORM_LAYER = 0, 1
ACT_SILU_GATED, ACT_GELU_TANH, ACT_GELU_ERF = 0, 1, 2
_GELU = {"NewGELUActivation": ACT_GELU_TANH, "GELUTanh": ACT_GELU_TANH, "GELUActivation": ACT_GELU_ERF}
_SILU = ("SiLU", "SiLUActivation")


class Ineligible(Exception):
    """This model (or call) has a part the native step does not run; the message says which."""


def _w8_up_to(module: Int8Linear, policy: KernelPolicy) -> float:
    """The largest M whose call the policy gives the w8 kernel (inf: every M; 0: not even M = 1)."""
    rules = policy.rules(module)
    if rules[0][1] != "w8":
        return 0
    later = [m for m, k in rules[1:] if k != "w8"]
    return later[0] - 1 if later else math.inf


def _fused(mods: list[nn.Module], policy: KernelPolicy, what: str,
           w8_max: list[float]) -> tuple[tuple, list[Tensor]]:
    """One linear whose rows are ``mods``' rows in order, and the tensors it points into (to keep alive):
    (w, packed, scale, bias, N, K, smooth) for Int8Linear, with (group, q4, scale16, zero) appended for
    W4Linear (smooth 0). Appends to ``w8_max`` the largest M each runs as the eager step would (w4: every M)."""
    if all(isinstance(m, W4Linear) for m in mods):
        return _fused_w4(mods, what, w8_max)
    for m in mods:
        if not isinstance(m, Int8Linear):
            raise Ineligible(f"{what} is a {type(m).__name__}, not an Int8Linear or W4Linear"
                             + (" (all of its parts must be one kind)" if len(mods) > 1 else ""))
        if policy.kernel(m, 1) != "w8":
            raise Ineligible(f"{what} runs the {policy.kernel(m, 1)!r} kernel at M = 1, not 'w8'")
        w8_max.append(_w8_up_to(m, policy))
        if m.w_q.device.type != "cpu" or (m.bias is not None and m.bias.dtype != torch.float32):
            raise Ineligible(f"{what} is not on the CPU with a float32 bias")
    # SmoothQuant: the step multiplies the shared input by the smoothing vector before the fused
    # linear, so fused linears must share one (compress smooths linears that read the same input jointly).
    smooth = mods[0].smooth
    if any((m.smooth is None) != (smooth is None) for m in mods) or (
            smooth is not None and not all(torch.equal(m.smooth, smooth) for m in mods[1:])):
        raise Ineligible(f"{what} read one input but have different smoothing vectors")
    if smooth is not None and (smooth.dtype != torch.float32 or not smooth.is_contiguous()):
        raise Ineligible(f"{what}'s smoothing vector is not contiguous float32")
    sp = 0 if smooth is None else smooth.data_ptr()
    if len(mods) == 1:
        m = mods[0]
        m.current_pack()  # packed from the w_q it holds now (the step keeps pointers to both)
        keep = [m.w_q, m.w_packed, m.w_scale] + ([] if m.bias is None else [m.bias]) + ([] if smooth is None else [smooth])
    else:
        # Packed only: the int8 copy is dropped (the scalar ISA, which reads it, runs the eager step).
        w_q = torch.cat([m.w_q for m in mods])
        packed = ops.int8_pack_weight(w_q)
        scale = torch.cat([m.w_scale for m in mods]).contiguous()
        bias = _cat_bias(mods)
        keep = [packed, scale] + ([] if bias is None else [bias]) + ([] if smooth is None else [smooth])
        n, k = scale.shape[0], mods[0].in_features
        return (0, packed.data_ptr(), scale.data_ptr(), 0 if bias is None else bias.data_ptr(), n, k, sp), keep
    bias = m.bias
    return (m.w_q.data_ptr(), m.w_packed.data_ptr(), m.w_scale.data_ptr(), 0 if bias is None else bias.data_ptr(),
            m.out_features, m.in_features, sp), keep


def _cat_bias(mods: list[nn.Module]) -> Tensor | None:
    if not any(m.bias is not None for m in mods):
        return None
    # a missing bias adds zeros: the same outputs
    return torch.cat([m.bias.float() if m.bias is not None else torch.zeros(m.out_features) for m in mods])


def _fused_w4(mods: list[W4Linear], what: str, w8_max: list[float]) -> tuple[tuple, list[Tensor]]:
    """W4Linear parts: their rows concatenated (codes, scales and zero points are per row, so the fused
    linear gives each output column the bits its own module gives), kept row-major too (scalar ISA)."""
    first = mods[0]
    if len({(m.in_features, m.group_size, m.zero_point) for m in mods}) != 1:
        raise Ineligible(f"{what}'s W4Linear parts differ in group size or zero points")
    for m in mods:
        if m.w_q4.device.type != "cpu" or (m.bias is not None and m.bias.dtype != torch.float32):
            raise Ineligible(f"{what} is not on the CPU with a float32 bias")
        w8_max.append(math.inf)  # the eager step runs w4_linear at every M too
    q4 = torch.cat([m.w_q4 for m in mods]).contiguous()
    scale = torch.cat([m.w_scale for m in mods]).contiguous()
    zero = torch.cat([m.w_zero for m in mods]).contiguous() if first.zero_point else None
    packed = ops.w4_pack_weight(q4, scale, zero, first.group_size, first.in_features)
    bias = _cat_bias(mods)
    keep = [q4, scale, packed] + [t for t in (zero, bias) if t is not None]
    return (0, packed.data_ptr(), 0, 0 if bias is None else bias.data_ptr(), q4.shape[0], first.in_features, 0,
            first.group_size, q4.data_ptr(), scale.data_ptr(), 0 if zero is None else zero.data_ptr()), keep


def _f32(t: Tensor | None, what: str) -> Tensor | None:
    if t is None:
        return None
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise Ineligible(f"{what} is {t.dtype} on {t.device}, not float32 on the CPU")
    return t.detach().contiguous()


class NativeDecoder:
    """A built DecodePlan plus every tensor it points into; ``session(...)`` per generate call."""

    def __init__(self, plan: Any, keep: list[Tensor], rope: bool, vocab: int, fused_only: bool,
                 max_prefill: float, max_batch: float, kv_shapes: list[tuple[int, int]], table_width: int) -> None:
        self.plan, self._keep, self.rope, self.vocab = plan, keep, rope, vocab
        # Per layer (KV heads, head dim) the plan writes, and the last dim of each position table
        # (RoPE: rotary dim; GPT-2: hidden size): a session checks the caller's buffers against them,
        # since the C++ step trusts the pointers it is given.
        self.kv_shapes, self.table_width = kv_shapes, table_width
        self.fused_only = fused_only  # some weights exist only packed: no scalar-ISA run
        # The native calls run the "w8" kernel at M = rows, so they serve only the row counts for which
        # the eager forward would pick it too: the longest prompt a prefill runs natively (M = T; the LM
        # head projects one row), and the most rows a batched decode step does (M = B, LM head included).
        self.max_prefill, self.max_batch = max_prefill, max_batch

    @classmethod
    def build(cls, model: nn.Module, policy: KernelPolicy, family: str) -> "tuple[NativeDecoder | None, str]":
        """(the native decoder for a ``family`` ("llama" or "gpt2") model, "") or (None, why not)."""
        try:
            served = ops.backend()
            if served["cpu"] != "native":  # the step replaces the native kernels' calls, nothing else
                raise Ineligible(f"CPU ops run the {served['cpu']} implementation (SLIMRT_BACKEND="
                                 f"{served['requested']}), not the native kernels")
            builders = {"llama": _build_llama, "gpt2": _build_gpt2}
            if family not in builders:
                raise Ineligible(f"the native step covers the Llama and GPT-2 families, not {family}")
            return builders[family](model, policy), ""
        except Ineligible as e:
            return None, str(e)
        except ValueError as e:  # a shape the native plan rejects (its message names it)
            return None, f"the native plan rejected the model: {e}"

    def session(self, cache: Any, positions: Tensor | tuple[Tensor, Tensor], max_len: int,
                pads: list[int] | None = None, *, any_batch: bool = False) -> "NativeSession | None":
        """A session over a KVCache of B rows (row b left-padded by ``pads[b]`` slots; default none) and
        the call's position tables (LlamaLean.prepare's (cos, sin) or GPT2Lean.prepare's position
        embeddings), or None when this call must run the eager step (a sliding-window cache, B above
        ``max_batch``, the scalar ISA with fused weights).

        ``any_batch``: open it whatever B, for a caller whose rows are independent sequences that must
        each match their own batch-1 run (the server's continuous batching): the w8 kernel gives a row
        the same bits at any M, and at M = 1 it is what every eligible model runs."""
        if self.fused_only and _native.load().active_isa() == "scalar":
            return None
        ks, vs = getattr(cache, "k", None), getattr(cache, "v", None)
        if type(cache).__name__ != "KVCache" or not ks:
            return None
        b = ks[0].shape[0]
        fits = 1 <= b and (any_batch or b <= self.max_batch)
        if not fits or not all(t.dtype == torch.float32 and t.is_contiguous() for t in ks + vs):
            return None
        pads = [0] * b if pads is None else [int(p) for p in pads]
        if len(pads) != b:
            raise ValueError(f"NativeDecoder.session: {len(pads)} paddings for a cache of {b} rows")
        if len(ks) != len(self.kv_shapes) or len(vs) != len(self.kv_shapes):
            raise ValueError(f"NativeDecoder.session: a cache of {len(ks)} layers for a model of {len(self.kv_shapes)}")
        for i, ((hkv, hd), kt, vt) in enumerate(zip(self.kv_shapes, ks, vs)):
            if tuple(kt.shape) != (b, hkv, max_len, hd) or tuple(vt.shape) != (b, hkv, max_len, hd):
                raise ValueError(f"NativeDecoder.session: layer {i}'s cache is k {tuple(kt.shape)} / v "
                                 f"{tuple(vt.shape)}, expected ({b}, {hkv}, {max_len}, {hd}) for max_len={max_len}")
        tables = tuple(t.contiguous() for t in positions) if self.rope else (positions.contiguous(),)
        if any(t.dtype != torch.float32 or t.shape[-1] != self.table_width for t in tables):
            raise ValueError(f"NativeDecoder.session: position tables must be float32 with last dim "
                             f"{self.table_width}, got {[(t.dtype, tuple(t.shape)) for t in tables]}")
        if any(t.shape[0] != b or t.numel() != b * max_len * t.shape[-1] for t in tables):
            raise ValueError(f"NativeDecoder.session: position tables of shape {tuple(tables[0].shape)} for "
                             f"{b} rows of {max_len} slots")
        ptrs = (tables[0].data_ptr(), tables[1].data_ptr(), 0) if self.rope else (0, 0, tables[0].data_ptr())
        sess = _native.load().DecodeSession(self.plan, [t.data_ptr() for t in ks], [t.data_ptr() for t in vs],
                                            max_len, *ptrs, pads)
        return NativeSession(sess, (ks, vs, tables), self.vocab, self.max_prefill if b == 1 and not any(pads) else 0,
                             b)


class NativeSession:
    """``step(tok, slot)``: tok (B,) long -> logits (B, V) float32 (a buffer reused by the next step);
    ``prefill(ids)``: ids (T,) long at slots [0, T) -> the last position's logits (1, V), for one
    unpadded row and T <= max_prefill; ``greedy()``: torch.argmax of the latest logits (B,).
    ``run_rows`` (and its shorthands ``prefill_row``, ``step_rows``): rows at their own slots, each
    cache row an independent sequence (the server's continuous batching)."""

    def __init__(self, sess: Any, keep: tuple, vocab: int, max_prefill: float, batch: int) -> None:
        self._sess, self._keep, self.max_prefill, self.batch = sess, keep, max_prefill, batch
        self.logits = torch.empty((batch, vocab), dtype=torch.float32)
        self._out = self.logits.data_ptr()
        self._greedy = torch.zeros(batch, dtype=torch.long)  # argmax of self.logits, written with them
        self._greedy_ptr = self._greedy.data_ptr()
        self._rows_logits = torch.empty((batch, vocab), dtype=torch.float32)  # run_rows' output, grown on demand
        self._rows_greedy = torch.zeros(batch, dtype=torch.long)

    def greedy(self) -> Tensor:
        """(B,) long: torch.argmax of the latest logits (computed natively with them; a new tensor)."""
        return self._greedy.clone()

    def prefill(self, ids: Tensor) -> Tensor:
        if ids.dtype != torch.long or ids.dim() != 1 or ids.device.type != "cpu":
            raise ValueError(f"NativeSession.prefill: ids must be a 1-D int64 CPU tensor, got {ids.dtype} "
                             f"of shape {tuple(ids.shape)}")
        if not 1 <= ids.shape[0] <= self.max_prefill:
            raise ValueError(f"NativeSession.prefill: {ids.shape[0]} tokens; this session prefills 1 to "
                             f"{self.max_prefill} natively (one unpadded row only)")
        ids = ids.contiguous()
        self._sess.forward(ids.data_ptr(), ids.shape[0], 0, self._out, self._greedy_ptr, torch.get_num_threads())
        return self.logits[:1]

    def step(self, tok: Tensor, slot: int) -> Tensor:
        if tok.dtype != torch.long or tok.numel() != self.batch or tok.device.type != "cpu":
            raise ValueError(f"NativeSession.step: tok must hold one int64 token per row ({self.batch}) on the CPU, "
                             f"got {tok.dtype} of shape {tuple(tok.shape)}")
        tok = tok.contiguous()
        self._sess.step(tok.data_ptr(), slot, self._out, self._greedy_ptr, torch.get_num_threads())
        return self.logits

    def run_rows(self, tokens: Tensor, rows: Tensor, slots: Tensor, out: Tensor,
                 num_threads: int | None = None) -> tuple[Tensor, Tensor]:
        """One call over any rows at their own slots (continuous batching: each cache row holds its own
        sequence). tokens, rows, slots (n,) int64: token i goes into cache row rows[i] at slot slots[i]
        and attends to that row's keys up to its slot (earlier slots written by earlier calls or by this
        one), so one call decodes one token of some rows and prefills prompt chunks of others.
        -> (logits (len(out), V), their argmax (len(out),)) of the tokens ``out`` lists: buffers that the
        next call reuses. Every linear runs the w8 kernel at M = n, which gives each row the bits it
        gets at any other M."""
        named = {"tokens": tokens, "rows": rows, "slots": slots, "out": out}
        for name, t in named.items():
            if t.dtype != torch.long or t.dim() != 1 or t.device.type != "cpu":
                raise ValueError(f"NativeSession.run_rows: {name} must be a 1-D int64 CPU tensor, got {t.dtype} "
                                 f"of shape {tuple(t.shape)}")
        n = tokens.shape[0]
        if rows.shape[0] != n or slots.shape[0] != n:
            raise ValueError(f"NativeSession.run_rows: {n} tokens, {rows.shape[0]} rows and {slots.shape[0]} slots; "
                             "one row and one slot per token")
        n_out = out.shape[0]
        if n_out > self._rows_logits.shape[0]:
            self._rows_logits = torch.empty((n_out, self.logits.shape[1]), dtype=torch.float32)
            self._rows_greedy = torch.zeros(n_out, dtype=torch.long)
        tokens, rows, slots, out = (t.contiguous() for t in (tokens, rows, slots, out))
        self._sess.run_rows(tokens.data_ptr(), rows.data_ptr(), slots.data_ptr(), n, out.data_ptr(), n_out,
                            self._rows_logits.data_ptr(), self._rows_greedy.data_ptr(),
                            torch.get_num_threads() if num_threads is None else num_threads)
        return self._rows_logits[:n_out], self._rows_greedy[:n_out]

    def prefill_row(self, b: int, ids: Tensor, start: int = 0) -> Tensor:
        """ids (T,) into cache row b at slots [start, start + T) -> the last one's logits (1, V) (reused buffer)."""
        n = ids.shape[0] if ids.dim() == 1 else 0  # run_rows names what is wrong with other shapes
        logits, _ = self.run_rows(ids, torch.full((n,), b, dtype=torch.long), torch.arange(start, start + n),
                                  torch.tensor([n - 1]))
        return logits

    def step_rows(self, tokens: Tensor, rows: Tensor, slots: Tensor) -> Tensor:
        """One token per listed row at its own slot -> logits (n, V) (reused buffer)."""
        logits, _ = self.run_rows(tokens, rows, slots, torch.arange(tokens.shape[0]))
        return logits


def _act_kind(act: Any, gated: bool) -> int:
    name = type(act).__name__
    if gated:
        if name not in _SILU:
            raise Ineligible(f"the gated MLP's activation is {name}, not SiLU")
        return ACT_SILU_GATED
    if name not in _GELU:
        raise Ineligible(f"the MLP's activation is {name}; supported: {', '.join(_GELU)}")
    return _GELU[name]


def _build_llama(model: nn.Module, policy: KernelPolicy) -> NativeDecoder:
    from slimrt.models.llama import _rope_inv_freq

    cfg = model.config
    base = model.model
    if read_pattern(cfg) is not None:
        raise Ineligible("the model has a sliding-window attention pattern")
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    inv_freq, _ = _rope_inv_freq(cfg)
    rot = 2 * inv_freq.shape[0]
    keep: list[Tensor] = []
    w8_max: list[float] = []
    embed = _f32(base.embed_tokens.weight, "the embedding")
    plan = _native.load().DecodePlan(int(cfg.hidden_size), int(head_dim), int(rot), int(cfg.vocab_size),
                                     NORM_RMS, ACT_SILU_GATED, float(cfg.rms_norm_eps))
    fused_only = False
    kv_shapes: list[tuple[int, int]] = []
    for i, layer in enumerate(base.layers):
        at, mlp = layer.self_attn, layer.mlp
        _act_kind(mlp.act_fn, gated=True)
        if not mlp.down_proj.in_features == mlp.gate_proj.out_features == mlp.up_proj.out_features:
            raise Ineligible(f"layer {i}'s gate, up and down projections disagree on the MLP width")
        if at.q_proj.out_features % head_dim or at.k_proj.out_features % head_dim:
            raise Ineligible(f"layer {i}'s q/k projections are not whole heads of {head_dim}")
        qkv, k1 = _fused([at.q_proj, at.k_proj, at.v_proj], policy, f"layer {i} q/k/v", w8_max)
        o, k2 = _fused([at.o_proj], policy, f"layer {i} o_proj", w8_max)
        up, k3 = _fused([mlp.gate_proj, mlp.up_proj], policy, f"layer {i} gate/up", w8_max)
        down, k4 = _fused([mlp.down_proj], policy, f"layer {i} down_proj", w8_max)
        ln1 = _f32(layer.input_layernorm.weight, f"layer {i} input_layernorm")
        ln2 = _f32(layer.post_attention_layernorm.weight, f"layer {i} post_attention_layernorm")
        qn = kn = None
        if hasattr(at, "q_norm"):
            qn, kn = _f32(at.q_norm.weight, f"layer {i} q_norm"), _f32(at.k_norm.weight, f"layer {i} k_norm")
        keep += k1 + k2 + k3 + k4 + [t for t in (ln1, ln2, qn, kn) if t is not None]
        fused_only = fused_only or qkv[0] == 0 and len(qkv) == 7 or up[0] == 0 and len(up) == 7  # int8, packed only
        h, hkv = at.q_proj.out_features // head_dim, at.k_proj.out_features // head_dim
        kv_shapes.append((hkv, int(head_dim)))
        plan.add_layer(ln1.data_ptr(), 0, qkv, h, hkv, 0 if qn is None else qn.data_ptr(),
                       0 if kn is None else kn.data_ptr(), 1.0 / math.sqrt(head_dim), o, ln2.data_ptr(), 0, up, down)
    norm_w = _f32(base.norm.weight, "the final norm")
    head_max: list[float] = []
    head, k5 = _fused([model.lm_head], policy, "lm_head", head_max)  # the prefill projects one row only
    keep += [embed, norm_w] + k5
    plan.set_head(embed.data_ptr(), norm_w.data_ptr(), 0, head)
    return NativeDecoder(plan, keep, rope=True, vocab=int(cfg.vocab_size), fused_only=fused_only,
                         max_prefill=min(w8_max), max_batch=min(w8_max + head_max), kv_shapes=kv_shapes,
                         table_width=int(rot))


def _build_gpt2(model: nn.Module, policy: KernelPolicy) -> NativeDecoder:
    cfg = model.config
    tr = model.transformer
    if read_pattern(cfg) is not None:
        raise Ineligible("the model has a sliding-window attention pattern")
    head_dim = cfg.n_embd // cfg.n_head
    act = _act_kind(tr.h[0].mlp.act, gated=False)
    plan = _native.load().DecodePlan(int(cfg.n_embd), int(head_dim), 0, int(cfg.vocab_size), NORM_LAYER, act,
                                     float(cfg.layer_norm_epsilon))
    keep: list[Tensor] = []
    w8_max: list[float] = []
    kv_shapes: list[tuple[int, int]] = []
    for i, blk in enumerate(tr.h):
        if _act_kind(blk.mlp.act, gated=False) != act:
            raise Ineligible("the activation differs between layers")
        qkv, k1 = _fused([blk.attn.c_attn], policy, f"layer {i} c_attn", w8_max)
        o, k2 = _fused([blk.attn.c_proj], policy, f"layer {i} attn.c_proj", w8_max)
        fc, k3 = _fused([blk.mlp.c_fc], policy, f"layer {i} c_fc", w8_max)
        proj, k4 = _fused([blk.mlp.c_proj], policy, f"layer {i} mlp.c_proj", w8_max)
        lns = [_f32(t, f"layer {i} layer norm") for t in (blk.ln_1.weight, blk.ln_1.bias, blk.ln_2.weight,
                                                         blk.ln_2.bias)]
        scale = 1.0 / math.sqrt(head_dim) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= i + 1
        h = blk.attn.c_attn.out_features // (3 * head_dim)
        kv_shapes.append((h, int(head_dim)))
        keep += k1 + k2 + k3 + k4 + lns
        plan.add_layer(lns[0].data_ptr(), lns[1].data_ptr(), qkv, h, h, 0, 0, scale, o, lns[2].data_ptr(),
                       lns[3].data_ptr(), fc, proj)
    wte, wpe = _f32(tr.wte.weight, "wte"), _f32(tr.wpe.weight, "wpe")
    lnf = [_f32(tr.ln_f.weight, "ln_f"), _f32(tr.ln_f.bias, "ln_f")]
    head_max: list[float] = []
    head, k5 = _fused([model.lm_head], policy, "lm_head", head_max)  # the prefill projects one row only
    keep += [wte, wpe] + lnf + k5
    plan.set_head(wte.data_ptr(), lnf[0].data_ptr(), lnf[1].data_ptr(), head)
    return NativeDecoder(plan, keep, rope=False, vocab=int(cfg.vocab_size), fused_only=False,
                         max_prefill=min(w8_max), max_batch=min(w8_max + head_max), kv_shapes=kv_shapes,
                         table_width=int(cfg.n_embd))
