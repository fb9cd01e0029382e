"""slimrt.distill(student, teacher, data, steps, lr): win back what compression cost.

The student (a compressed model, or a shallower copy of the teacher from ``drop_layers``) is
trained to match the teacher on text:
  encoders: hidden-state MSE over matched layers (normalised by the teacher's mean square) +
            1 - cosine of the mean-pooled embeddings;
  decoders: KL(P_teacher || P_student) of next-token distributions + the hidden-state MSE.
What trains: every float parameter except embeddings and the output head (LayerNorm/RMSNorm
weights and biases, dense layers left uncompressed, all of a drop-layers student's blocks), plus
each slimrt module's ``TRAINABLE`` float state (Int8Linear: w_scale, bias, smooth; LowRankLinear:
float factors u, v or the int8 factors' scales, bias). Integer weights never change. slimrt modules
run their differentiable PyTorch path while training (nn/_train.py), the kernels afterwards.

Deterministic for a seed (fixed batches, seeded order, dropout off: the model stays in eval mode).
On any exception or KeyboardInterrupt the student's trained tensors are restored to their values
before the call and the exception propagates: nothing half-trained is kept or written.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CACHE_BYTES = 512 << 20  # teacher outputs are cached per batch up to this size, recomputed beyond
_HEAD_NAMES = ("lm_head", "embed_out")
_SCALE_NAMES = ("w_scale", "u_scale", "v_scale", "smooth")


# ---- shallower students ---------------------------------------------------------------------------

def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the transformer blocks: the ModuleList with config.num_hidden_layers
    entries (BERT encoder.layer, Llama model.layers, GPT-2 transformer.h, and their relatives)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return name, mod
    raise ValueError(f"drop_layers: found no nn.ModuleList of config.num_hidden_layers={n} blocks in "
                     f"{type(model).__name__}")


def parse_keep(spec: str | Sequence[int], n_layers: int) -> list[int]:
    """Layers to KEEP from a --drop-layers spec: "every-other" (drop 0, 2, 4, ...: keeps the last
    block), or comma-separated indices to drop ("1,3,5"), or a sequence of indices to drop."""
    if isinstance(spec, str):
        if spec == "every-other":
            drop = set(range(0, n_layers, 2)) if n_layers % 2 == 0 else set(range(1, n_layers, 2))
        else:
            try:
                drop = {int(p) for p in spec.split(",") if p.strip()}
            except ValueError:
                raise ValueError(f"--drop-layers {spec!r}: expected 'every-other' or comma-separated layer "
                                 "indices") from None
    else:
        drop = {int(i) for i in spec}
    bad = sorted(i for i in drop if not 0 <= i < n_layers)
    if bad:
        raise ValueError(f"drop-layers: indices {bad} are outside the model's {n_layers} layers")
    keep = [i for i in range(n_layers) if i not in drop]
    if not keep:
        raise ValueError(f"drop-layers: dropping {sorted(drop)} leaves no layer of {n_layers}")
    return keep


def drop_layers(teacher: nn.Module, drop: str | Sequence[int] = "every-other") -> nn.Module:
    """A shallower student: a copy of ``teacher`` keeping only some blocks (weights copied).

    One generic mechanism for HF models: the block list is found by its length, the config's
    num_hidden_layers and any per-layer config list (e.g. layer_types) are cut to match, and
    blocks' ``layer_idx`` attributes (KV-cache slots) are renumbered. The kept indices are in
    ``student.slimrt_kept_layers`` (distill uses them to match hidden states).
    """
    name, blocks = layer_list(teacher)
    n = len(blocks)
    keep = parse_keep(drop, n)
    student = copy.deepcopy(teacher)
    parent_name, _, child = name.rpartition(".")
    parent = student.get_submodule(parent_name)
    new_blocks = nn.ModuleList([getattr(parent, child)[i] for i in keep])
    setattr(parent, child, new_blocks)
    for new_idx, block in enumerate(new_blocks):
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = new_idx
    for cfg in {id(m.config): m.config for m in student.modules() if hasattr(m, "config")}.values():
        for key, val in list(vars(cfg).items()):
            if isinstance(val, list) and len(val) == n and key != "architectures":
                setattr(cfg, key, [val[i] for i in keep])
        cfg.num_hidden_layers = len(keep)
    student.slimrt_kept_layers = keep
    student.eval()
    return student


# ---- what trains ----------------------------------------------------------------------------------

def trainable(model: nn.Module) -> dict[str, Tensor]:
    """{qualified name: tensor} that distillation trains (see the module docstring)."""
    from slimrt.checkpoint import slimrt_modules
    from slimrt.nn._train import trainable_tensors

    slim = slimrt_modules(model)
    frozen: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding) or name.rpartition(".")[2] in _HEAD_NAMES:
            frozen.update(id(p) for p in mod.parameters())
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for pname, p in model.named_parameters():
        if any(pname.startswith(s + ".") for s in slim):
            continue
        if id(p) not in frozen and id(p) not in seen and p.is_floating_point():
            out[pname] = p
            seen.add(id(p))
    for sname, mod in slim.items():
        for tname, t in trainable_tensors(mod).items():
            if id(t) not in seen:
                out[f"{sname}.{tname}"] = t
                seen.add(id(t))
    return out


# ---- data and losses ------------------------------------------------------------------------------

def _make_batches(tokenizer: Any, texts: list[str], batch_size: int, max_tokens: int,
                  gen: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    from slimrt.evaluate import _tokenize

    order = torch.randperm(len(texts), generator=gen).tolist()
    out = []
    for s in range(0, len(order), batch_size):
        ids, mask = _tokenize(tokenizer, [texts[i] for i in order[s:s + batch_size]], max_tokens)
        out.append((ids, mask))
    return out


def _forward(model: nn.Module, ids: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor | None]:
    """(hidden states per layer incl. embeddings, logits or None) from the HF forward; a model carrying
    a sliding-window pattern (recipe method sparse_attention) is trained under that pattern."""
    from slimrt.attention import PATTERN_MODEL_TYPES, read_pattern
    from slimrt.evaluate import _window_mask

    cfg = getattr(model, "config", None)
    pattern = read_pattern(cfg) if getattr(cfg, "model_type", None) in PATTERN_MODEL_TYPES else None
    attn = mask if pattern is None else _window_mask(mask, pattern)
    out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    return list(out.hidden_states), getattr(out, "logits", None)


def _hidden_loss(hs: list[Tensor], ht: list[Tensor], layer_map: list[int], mask: Tensor) -> Tensor:
    """Mean over matched layers of masked MSE / teacher mean square (scale-free)."""
    m = mask.unsqueeze(-1).float()  # (B, T, 1)
    total = hs[0].new_zeros(())
    for i_s, i_t in enumerate(layer_map, start=1):  # hidden_states[0] is the (frozen) embedding output
        t = ht[i_t].float()
        total = total + (((hs[i_s].float() - t) ** 2) * m).sum() / ((t ** 2 * m).sum() + 1e-12)
    return total / len(layer_map)


def _pool(h: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).float()
    return (h.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _loss(kind: str, s: tuple[list[Tensor], Tensor | None], t: tuple[list[Tensor], Tensor | None],
          layer_map: list[int], mask: Tensor, weights: dict[str, float]) -> Tensor:
    loss = weights["hidden"] * _hidden_loss(s[0], t[0], layer_map, mask)
    if kind == "encoder":
        cos = F.cosine_similarity(_pool(s[0][-1], mask), _pool(t[0][-1], mask), dim=-1)  # (B,)
        return loss + weights["cosine"] * (1 - cos).mean()
    lp_t = F.log_softmax(t[1].float(), dim=-1)
    lp_s = F.log_softmax(s[1].float(), dim=-1)
    kl = (lp_t.exp() * (lp_t - lp_s)).sum(-1)  # (B, T)
    m = mask.float()
    return loss + weights["kl"] * (kl * m).sum() / m.sum()


# ---- the loop -------------------------------------------------------------------------------------

def distill(student: Any, teacher: Any, data: Sequence[str] | None = None, steps: int = 100, lr: float = 1e-4,
            seed: int = 0, *, tokenizer: Any = None, batch_size: int = 8, max_tokens: int = 128,
            layer_map: Sequence[int] | None = None, hidden_weight: float = 1.0, cosine_weight: float = 1.0,
            kl_weight: float = 1.0, scale_lr: float = 0.1, progress: bool = True) -> dict[str, Any]:
    """Trains ``student`` in place to match ``teacher``; returns what happened (also stored in
    ``student.slimrt_meta["distill"]`` when the student has slimrt_meta).

    student, teacher: HF model objects (or slimrt.Runner, whose .model is used). data: list of
    strings (default: the calibration split of pydoc_data.topics, disjoint from evaluation).
    layer_map[i]: the teacher layer that student layer i imitates (default: identity, or the kept
    layers of a ``drop_layers`` student). scale_lr: quantization scales move by about
    ``scale_lr * lr`` of their own size per step (Adam's step is ~lr in absolute terms, too much
    for scales of ~1e-3). Returns keys: steps, lr, seed, loss_before, loss_after, trainable_numel,
    trainable_tensors, seconds.
    """
    from tqdm import tqdm

    from slimrt.runner import Runner

    tok = tokenizer
    if isinstance(student, Runner):
        tok = tok or student.tokenizer
        student = student.model
    if isinstance(teacher, Runner):
        tok = tok or teacher.tokenizer
        teacher = teacher.model
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"distill: steps={steps!r} must be an int >= 0")
    if not lr > 0:
        raise ValueError(f"distill: lr={lr!r} must be > 0")
    if tok is None:
        raise ValueError("distill: no tokenizer; pass tokenizer= or Runners that have one")
    from slimrt import models

    lean, _ = models.select(teacher)  # the lean forward or the generic one: its kind and context
    kind, max_tokens = lean.kind, min(max_tokens, lean.max_positions)
    n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    if layer_map is None:
        meta = getattr(student, "slimrt_meta", None)
        saved_keep = (meta.get("student") or {}).get("kept_layers") if isinstance(meta, dict) else None
        layer_map = (getattr(student, "slimrt_kept_layers", None) or saved_keep  # a reloaded student keeps it here
                     or (list(range(n_s)) if n_s == n_t else None))
        if layer_map is None:
            raise ValueError(f"distill: the student has {n_s} layers and the teacher {n_t}; pass layer_map")
    layer_map = [int(i) + 1 for i in layer_map]  # -> indices into hidden_states (0 = embeddings)
    if len(layer_map) != n_s or not all(1 <= i <= n_t for i in layer_map):
        raise ValueError(f"distill: layer_map must give one teacher layer in [0, {n_t}) per student layer ({n_s})")
    if data is None:
        from slimrt.data import pydoc_paragraphs

        data = pydoc_paragraphs("calibration")
    texts = list(data)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("distill: data must be a non-empty list of non-empty strings")
    weights = {"hidden": hidden_weight, "cosine": cosine_weight, "kl": kl_weight}

    params = trainable(student)
    if not params:
        raise ValueError("distill: the student has no float tensors to train")
    saved = {n: t.detach().clone() for n, t in params.items()}  # restored if anything goes wrong
    flags = {id(p): p.requires_grad for p in student.parameters()}
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            batches = _make_batches(tok, texts, batch_size, max_tokens, gen)
            for p in student.parameters():
                p.requires_grad_(False)
            for t in params.values():
                t.requires_grad_(True)
            student.eval()
            teacher.eval()
            cache: dict[int, Any] = {}
            cached = 0

            def teacher_out(i: int):
                nonlocal cached
                if i in cache:
                    return cache[i]
                with torch.inference_mode():
                    hs, logits = _forward(teacher, *batches[i])
                out = ([h.clone() for h in hs], None if logits is None else logits.clone())
                size = sum(h.nbytes for h in out[0]) + (out[1].nbytes if out[1] is not None else 0)
                if cached + size <= CACHE_BYTES:
                    cache[i], cached = out, cached + size
                return out

            def measure() -> float:  # mean loss over (up to) the first 4 batches, no grad
                vals = []
                with torch.no_grad():
                    for i in range(min(4, len(batches))):
                        ids, mask = batches[i]
                        vals.append(float(_loss(kind, _forward(student, ids, mask), teacher_out(i), layer_map,
                                                mask, weights)))
                return sum(vals) / len(vals)

            # Gradients only reach the trainable tensors; no_grad in measure() keeps the kernels running.
            loss_before = measure()
            groups = [{"params": [t for n, t in params.items() if n.rpartition(".")[2] not in _SCALE_NAMES],
                       "lr": lr}]
            groups += [{"params": [t], "lr": lr * scale_lr * float(t.detach().abs().mean())}
                       for n, t in params.items() if n.rpartition(".")[2] in _SCALE_NAMES]
            groups = [g for g in groups if g["params"]]
            opt = torch.optim.AdamW(groups, weight_decay=0.0)
            base_lrs = [g["lr"] for g in opt.param_groups]
            bar = tqdm(range(steps), desc="slimrt distill", unit="step", disable=not progress)
            for step in bar:
                frac = 1.0 - step / max(steps, 1)  # linear decay to 0
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * frac
                i = step % len(batches)
                ids, mask = batches[i]
                loss = _loss(kind, _forward(student, ids, mask), teacher_out(i), layer_map, mask, weights)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"distill: the loss became {loss.item()} at step {step}; lower lr={lr}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.set_postfix(loss=f"{loss.item():.4g}")
            loss_after = measure()
    except BaseException:
        with torch.no_grad():
            for n, t in params.items():
                t.copy_(saved[n])
        raise
    finally:
        for t in params.values():
            t.requires_grad_(False)
        for p in student.parameters():
            p.requires_grad_(flags.get(id(p), False))
        for mod in student.modules():  # packed kernel copies follow the (unchanged) int8 weights
            if hasattr(mod, "repack"):
                mod.repack()
    record = {"steps": steps, "lr": lr, "seed": seed, "batch_size": batch_size, "max_tokens": max_tokens,
              "texts": len(texts), "loss_before": loss_before, "loss_after": loss_after,
              "trainable_tensors": len(params), "trainable_numel": sum(t.numel() for t in params.values()),
              "seconds": round(time.perf_counter() - t0, 2)}
    meta = getattr(student, "slimrt_meta", None)
    if isinstance(meta, dict):
        meta["distill"] = record
    return record


__all__ = ["distill", "drop_layers", "trainable", "layer_list", "parse_keep"]
