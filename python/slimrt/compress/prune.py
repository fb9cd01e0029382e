"""Methods "prune_heads" and "prune_ffn": structured pruning that physically shrinks layers.

prune_heads removes a fraction of each attention block's heads from its Q/K/V rows and its output
projection's columns. With grouped-query attention a key/value head and the query heads that read it
go together (a "group"), so the Q/KV ratio, and with it the attention code, is unchanged. Head
importance is the head's output norm on the calibration data: sum over tokens of
||W_o[:, head] x_head||^2 (its contribution to the block output), summed over the group; without
calibration data, (||value row|| * ||W_o column||)^2 summed over the head's channels.

prune_ffn removes a fraction of each FFN's intermediate channels: rows of up (and gate) and columns
of down, scored by RMS(h_c) over the calibration tokens (h = the down projection's input) times
||W_down[:, c]||, the RMS norm of the channel's contribution; without calibration, by
||W_up[c]|| (* ||W_gate[c]||) * ||W_down[:, c]||. Statistics come from one pass over the unpruned
model per method (padding tokens included, as in slimrt.compress.calibration).

Blocks are recognised by their layer names, one table for all architectures (no per-model code):
attention q_proj/k_proj/v_proj/o_proj + head_dim (Llama, Mistral, Qwen) or self.{query,key,value} +
output.dense + attention_head_size (BERT family); FFN gate_proj/up_proj/down_proj or
intermediate.dense + output.dense. Transformers' attention infers the head count from the
projection width, so pruned blocks run unchanged. Each shrunk nn.Linear is recorded in
``model.config.slimrt_resized`` {layer name: [out_features, in_features]}, which the checkpoint
writes with the config and the loader applies to the skeleton before loading (slimrt.checkpoint.skeleton).
Prune methods must come before quantization in a recipe: they shrink dense nn.Linear layers only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from slimrt.compress.swap import Context, Fallback, Method, check_finite, register


@dataclass(frozen=True)
class _Attn:
    q: str
    k: str
    v: str
    o: str
    head_dim_attr: str  # attribute (on the block or its "self" child) holding the head dim


@dataclass(frozen=True)
class _Ffn:
    inputs: tuple[str, ...]  # layers whose output rows are intermediate channels
    down: str  # the layer whose input columns are intermediate channels


_ATTN_LAYOUTS = (
    _Attn("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"),
    _Attn("self.query", "self.key", "self.value", "output.dense", "self.attention_head_size"),
)
_FFN_LAYOUTS = (
    _Ffn(("gate_proj", "up_proj"), "down_proj"),
    _Ffn(("intermediate.dense",), "output.dense"),
)
# Recognised but not prunable here (fused projections), so they are reported as fallbacks.
_FUSED = {"c_attn": "fused QKV projection (GPT-2 style) is not supported by prune_heads",
          "c_fc": "GPT-2 style Conv1D MLP is not supported by prune_ffn"}


def _get(block: nn.Module, path: str) -> Any:
    cur: Any = block
    for part in path.split("."):
        cur = getattr(cur, part, None)
        if cur is None:
            return None
    return cur


def _attn_layout(module: nn.Module) -> _Attn | None:
    for lay in _ATTN_LAYOUTS:
        if all(isinstance(_get(module, p), nn.Module) for p in (lay.q, lay.k, lay.v, lay.o)):
            return lay
    return None


def _ffn_layout(module: nn.Module) -> _Ffn | None:
    for lay in _FFN_LAYOUTS:
        if all(isinstance(_get(module, p), nn.Module) for p in (*lay.inputs, lay.down)):
            return lay
    return None


def _accepts_attn(module: nn.Module) -> bool:
    return _attn_layout(module) is not None or (isinstance(_get(module, "c_attn"), nn.Module)
                                                and isinstance(_get(module, "c_proj"), nn.Module))


def _accepts_ffn(module: nn.Module) -> bool:
    return _ffn_layout(module) is not None or (isinstance(_get(module, "c_fc"), nn.Module)
                                               and isinstance(_get(module, "c_proj"), nn.Module))


def _dense(block_name: str, block: nn.Module, paths: tuple[str, ...]) -> dict[str, nn.Linear]:
    out = {}
    for p in paths:
        lin = _get(block, p)
        if type(lin) is not nn.Linear:
            raise Fallback(f"{p} is a {type(lin).__name__}, not a dense nn.Linear; list pruning methods before "
                           "quantization or low-rank methods in the recipe")
        if lin.weight.device.type == "meta":
            raise Fallback(f"{p} is on the meta device (not loaded)")
        check_finite(f"{block_name}.{p}", "weight", lin.weight)
        out[p] = lin
    return out


def _cow(module: nn.Module) -> nn.Module:
    """A shallow copy whose child/parameter tables are its own (the original stays intact)."""
    c = copy.copy(module)
    c._modules = dict(module._modules)
    c._parameters = dict(module._parameters)
    c._buffers = dict(module._buffers)
    return c


def _set_path(block: nn.Module, path: str, new: nn.Module) -> None:
    """Replaces block.<path> by new, copying the modules along the path so the input block is unchanged."""
    parts = path.split(".")
    cur = block
    for p in parts[:-1]:
        child = _cow(cur._modules[p])
        cur._modules[p] = child
        cur = child
    cur._modules[parts[-1]] = new


def _narrow(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new nn.Linear holding the selected output rows / input columns of lin."""
    w = lin.weight.detach()
    b = None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
        b = None if b is None else b.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    new.train(lin.training)
    return new


def _record(ctx: Context, name: str, lin: nn.Linear) -> None:
    """Writes the new shape into model.config.slimrt_resized so a checkpoint can rebuild it."""
    cfg = getattr(ctx.model, "config", None)
    if cfg is None:
        return  # plain modules: the checkpoint describes Linear shapes directly (kind "sequential")
    resized = dict(getattr(cfg, "slimrt_resized", None) or {})
    resized[name] = [lin.out_features, lin.in_features]
    cfg.slimrt_resized = dict(sorted(resized.items()))


def _calibration_sums(ctx: Context, key: str, accepts: Callable[[nn.Module], bool],
                      stat: Callable[[str, nn.Module], tuple[nn.Module, Callable[[Tensor], Tensor]] | None],
                      ) -> dict[str, Tensor] | None:
    """One calibration pass over the unpruned model (cached for the method's later convert calls):
    for every candidate block, ``stat(name, block)`` names a layer and a function of its input
    x (tokens, K) whose values are summed over all tokens. None without calibration data."""
    if key in ctx.state:
        return ctx.state[key]
    if ctx.calibration is None or ctx.model is None:
        ctx.state[key] = None
        return None
    from slimrt.compress.calibration import observe_inputs

    targets: dict[str, tuple[nn.Module, Callable[[Tensor], Tensor]]] = {}
    for name, block in ctx.model.named_modules():
        if accepts(block) and ctx.recipe.matches(name):
            target = stat(name, block)
            if target is not None:
                layer, fn = target
                targets[name] = (layer, lambda x, fn=fn: fn(x.float()))
    sums = observe_inputs(ctx.model, targets, ctx.calibration, ctx.tokenizer, combine="sum", progress=False,
                          desc=f"slimrt {key} calibration")
    ctx.state[key] = sums
    return sums


def _head_energy(w_o: Tensor, n_heads: int, head_dim: int) -> Callable[[Tensor], Tensor]:
    """x (T, Hq * D), the output projection's input -> (Hq,) sum over tokens of ||W_o[:, head] x_head||^2,
    i.e. each head's squared contribution to the block output."""
    w = w_o.detach().float().view(w_o.shape[0], n_heads, head_dim)  # (C, Hq, D)

    def fn(x: Tensor) -> Tensor:
        out = torch.zeros(n_heads, device=x.device)
        for t0 in range(0, x.shape[0], 1024):  # (T, Hq, C) per chunk stays a few MB
            y = torch.einsum("thd,chd->thc", x[t0:t0 + 1024].view(-1, n_heads, head_dim), w.to(x.device))
            out += y.pow(2).sum(dim=(0, 2))
        return out

    return fn


def _head_stat(name: str, block: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor]] | None:
    lay = _attn_layout(block)
    o, d = (None, None) if lay is None else (_get(block, lay.o), _get(block, lay.head_dim_attr))
    if type(o) is not nn.Linear or not isinstance(d, int) or d <= 0 or o.in_features % d:
        return None
    return o, _head_energy(o.weight, o.in_features // d, d)


def _ffn_stat(name: str, block: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor]] | None:
    lay = _ffn_layout(block)
    down = None if lay is None else _get(block, lay.down)
    if type(down) is not nn.Linear:
        return None
    return down, lambda x: x.pow(2).sum(dim=0)  # (I,) sum over tokens of h_c^2


def _n_prune(fraction: float, n: int) -> int:
    return min(n - 1, int(round(fraction * n)))


def _convert_heads(name: str, block: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    lay = _attn_layout(block)
    if lay is None:
        raise Fallback(_FUSED["c_attn"])
    lin = _dense(name, block, (lay.q, lay.k, lay.v, lay.o))
    q, k, v, o = lin[lay.q], lin[lay.k], lin[lay.v], lin[lay.o]
    head_dim = _get(block, lay.head_dim_attr)
    if not isinstance(head_dim, int) or head_dim <= 0 or q.out_features % head_dim or k.out_features % head_dim:
        raise Fallback(f"head dim {head_dim!r} does not divide the projections ({q.out_features}, {k.out_features})")
    n_q, n_kv = q.out_features // head_dim, k.out_features // head_dim
    if n_kv == 0 or n_q % n_kv or v.out_features != k.out_features or o.in_features != q.out_features:
        raise Fallback(f"unexpected projection shapes q={q.out_features} k={k.out_features} v={v.out_features} "
                       f"o_in={o.in_features} for head dim {head_dim}")
    group = n_q // n_kv  # query heads per key/value head
    drop = _n_prune(ctx.params["fraction"], n_kv)
    info: dict[str, Any] = {"kernel": "dense", "heads_before": n_q, "kv_heads_before": n_kv}
    if drop <= 0:
        return block, {**info, "heads_after": n_q, "kv_heads_after": n_kv, "kept_heads": list(range(n_q))}
    stats = _calibration_sums(ctx, "heads", _accepts_attn, _head_stat)
    energy = None if stats is None else stats.get(name)  # (Hq,) squared output norm per head
    if energy is not None:
        score, info["importance"] = energy.view(n_kv, group).sum(dim=1), "calibration"
    else:  # no calibration data reached this block: value-row norm x output-column norm per channel
        w_o = o.weight.detach().float()  # (C, Hq * D)
        v_norm = v.weight.detach().float().norm(dim=1).view(n_kv, 1, head_dim)
        act = v_norm.expand(n_kv, group, head_dim).reshape(-1)
        score = (act * w_o.norm(dim=0)).pow(2).view(n_kv, group * head_dim).sum(dim=1)
        info["importance"] = "weights"
    kept = torch.sort(torch.topk(score, n_kv - drop).indices).values  # groups kept, in order
    kv_rows = (kept.view(-1, 1) * head_dim + torch.arange(head_dim)).reshape(-1)
    heads = (kept.view(-1, 1) * group + torch.arange(group)).reshape(-1)  # query heads kept
    q_rows = (heads.view(-1, 1) * head_dim + torch.arange(head_dim)).reshape(-1)
    new = _cow(block)
    for path, rows, cols in ((lay.q, q_rows, None), (lay.k, kv_rows, None), (lay.v, kv_rows, None),
                             (lay.o, None, q_rows)):
        narrowed = _narrow(lin[path], rows=rows, cols=cols)
        _set_path(new, path, narrowed)
        _record(ctx, f"{name}.{path}", narrowed)
    return new, {**info, "heads_after": int(heads.numel()), "kv_heads_after": int(kept.numel()),
                 "kept_heads": heads.tolist()}


def _convert_ffn(name: str, block: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    lay = _ffn_layout(block)
    if lay is None:
        raise Fallback(_FUSED["c_fc"])
    lin = _dense(name, block, (*lay.inputs, lay.down))
    down = lin[lay.down]
    width = down.in_features
    if any(lin[p].out_features != width for p in lay.inputs):
        raise Fallback(f"intermediate widths differ: {[lin[p].out_features for p in lay.inputs]} vs down {width}")
    drop = _n_prune(ctx.params["fraction"], width)
    info: dict[str, Any] = {"kernel": "dense", "ffn_before": width}
    if drop <= 0:
        return block, {**info, "ffn_after": width}
    stats = _calibration_sums(ctx, "ffn", _accepts_ffn, _ffn_stat)
    sumsq = None if stats is None else stats.get(name)  # (I,) sum over tokens of h_c^2
    w_down = down.weight.detach().float()  # (C, I)
    if sumsq is not None:  # channel c adds h_c * W_down[:, c]: its RMS norm over the calibration tokens
        act, info["importance"] = sumsq.to(w_down.device).sqrt(), "calibration"
    else:
        act = torch.ones(width, device=w_down.device)
        for p in lay.inputs:
            act = act * lin[p].weight.detach().float().norm(dim=1)
        info["importance"] = "weights"
    score = act * w_down.norm(dim=0)
    kept = torch.sort(torch.topk(score, width - drop).indices).values
    new = _cow(block)
    for path in lay.inputs:
        narrowed = _narrow(lin[path], rows=kept)
        _set_path(new, path, narrowed)
        _record(ctx, f"{name}.{path}", narrowed)
    narrowed = _narrow(down, cols=kept)
    _set_path(new, lay.down, narrowed)
    _record(ctx, f"{name}.{lay.down}", narrowed)
    return new, {**info, "ffn_after": int(kept.numel())}


def _fraction_check(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


_FRACTION = {"fraction": (float, 0.25, _fraction_check)}
register(Method(name="prune_heads", group="prune_heads", accepts=_accepts_attn, convert=_convert_heads,
                params=_FRACTION))
register(Method(name="prune_ffn", group="prune_ffn", accepts=_accepts_ffn, convert=_convert_ffn, params=_FRACTION))
