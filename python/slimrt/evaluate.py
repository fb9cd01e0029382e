"""slimrt.evaluate(compressed, reference, data) -> dict: what compression cost, measured on text.

Encoders are compared on their sentence embeddings (slimrt.metrics: cosine min/mean/p5/p50,
top-k retrieval agreement, Spearman correlation of pairwise similarities); decoders on their
next-token distributions at every position (KL(P_ref || P_cmp), top-1 agreement) and on the
perplexity of the text under each model. Both models see the same token ids: the text is
tokenized once, with the reference's tokenizer when it has one.

The quality gate (``gate``) turns those numbers into accept/refuse for ``slimrt compress
--min-cosine / --max-kl``; ``QualityGateError`` carries the one-line reason.

Note: ``slimrt.evaluate`` is this module's function (exported eagerly by slimrt/__init__), so
import the other names with ``from slimrt.evaluate import gate``, not ``import slimrt.evaluate as m``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from slimrt import metrics
from slimrt.errors import SlimrtError

DEFAULT_TEXTS = 128  # eval paragraphs used when data is None (of 565; the split is disjoint from calibration)
DEFAULT_MAX_TOKENS = 128  # per text; MiniLM's sentence-transformers config truncates at 256
RETRIEVAL_K = 5


class QualityGateError(SlimrtError):
    """A compressed model missed a quality threshold (``slimrt compress`` exits with code 3)."""


def default_texts(n: int = DEFAULT_TEXTS) -> list[str]:
    """The first n paragraphs of the evaluation split of pydoc_data.topics (never calibration)."""
    from slimrt.data import pydoc_paragraphs

    return pydoc_paragraphs("eval")[:n]


def as_runner(obj: Any, tokenizer: Any = None, pooling: str | None = None):
    """A slimrt.Runner from a Runner, an HF model object, a slimrt checkpoint dir or an HF model dir."""
    from slimrt.models import KernelPolicy
    from slimrt.runner import Runner

    # Each Int8Linear runs its own mode (what the recipe asked for), not the runner's per-shape
    # choice, so the numbers do not depend on batch size; a Runner passed in keeps its policy.
    policy = KernelPolicy(mode="module")
    if isinstance(obj, Runner):
        return obj
    if isinstance(obj, nn.Module):
        return Runner(obj, tokenizer, pooling=pooling, policy=policy)
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isfile(os.path.join(path, "slimrt.json")):
            return Runner.from_checkpoint(path, policy=policy, thin=False)  # decoders score through the HF forward
        from slimrt.runner import read_embedding_settings

        model, tok = load_hf(path)
        return Runner(model, tok, policy=policy, **read_embedding_settings(path))
    raise TypeError(f"evaluate: expected a slimrt.Runner, an nn.Module or a model directory, got {type(obj).__name__}")


def load_hf(src: str | os.PathLike) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer or None) from a local Hugging Face model directory, offline,
    or from a GGUF file (slimrt.gguf.load_gguf).

    Only a model class defined by transformers itself is instantiated (config.json is input, never
    code to run); other architectures fall back to AutoModel / AutoModelForCausalLM.
    """
    from slimrt.gguf import is_gguf, load_gguf

    src = os.fspath(src)
    if is_gguf(src):  # a llama.cpp GGUF file (or a directory holding one): dequantized to float32
        return load_gguf(src)
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ValueError(f"{src!r} is neither a slimrt checkpoint (slimrt.json), a Hugging Face model "
                         "directory (config.json) nor a GGUF file")
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(src, local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = AutoModel
    model = cls.from_pretrained(src, local_files_only=True).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError):  # a model directory without tokenizer files is legal
        tokenizer = None
    return model, tokenizer


def _tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids and mask (B, T); padding ids are 0 (never attended or scored)."""
    rows = tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    return ids, mask


def _batches(ids: Tensor, mask: Tensor, batch_size: int, desc: str | None = None):
    """(ids, mask) per batch, trimmed to the batch's longest row; a progress bar when desc is given."""
    starts = range(0, ids.shape[0], batch_size)
    if desc is not None:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for s in starts:
        m = mask[s:s + batch_size]
        t = int(m.sum(1).max())  # trim the padding this batch does not need
        yield ids[s:s + batch_size, :t], m[:, :t]


def _embeddings(runner, ids: Tensor, mask: Tensor, batch_size: int, desc: str | None) -> Tensor:
    return torch.cat([runner.embed_ids(i, m, normalize=False) for i, m in _batches(ids, mask, batch_size, desc)])


def _hf_logits(runner) -> Callable[[Tensor, Tensor], Tensor]:
    """fn(ids, mask) -> full next-token logits (B, T, V) float32 from the HF forward (slimrt modules inside)."""
    from slimrt.attention import read_pattern

    pattern = read_pattern(runner.model.config)  # sparse_attention: score the pattern the Runner runs

    def logits(i: Tensor, m: Tensor) -> Tensor:
        with torch.inference_mode():
            return runner.model(input_ids=i, attention_mask=_window_mask(m, pattern) if pattern else m).logits.float()
    return logits


def _window_mask(mask: Tensor, pattern: dict[str, int]) -> Tensor:
    """(B, T) right-padding mask -> (B, 1, T, T) bool: the causal sliding window with sinks over real keys;
    every query also sees itself, so padding rows stay finite (their logits are never scored)."""
    from slimrt.attention import token_rule

    t = mask.shape[1]
    rule = token_rule(t, t, True, pattern["window"], pattern["num_global"], mask.device)
    eye = torch.eye(t, dtype=torch.bool, device=mask.device)
    return ((rule & mask.bool()[:, None, None, :]) | eye)


LONG_GROUP = 8  # texts joined into one long input for the full-length check


def evaluate(compressed: Any, reference: Any, data: Sequence[str] | None = None, kind: str | None = None, *,
             tokenizer: Any = None, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 16,
             k: int = RETRIEVAL_K, progress: bool = True) -> dict[str, Any]:
    """Compares ``compressed`` with ``reference`` on ``data`` and returns the metrics as a dict.

    compressed, reference: slimrt.Runner, HF model objects (wrapped in a Runner), or paths to a slimrt
    checkpoint / HF model directory. data: list of strings (default: ``default_texts()``, evaluation
    paragraphs disjoint from calibration). kind: "encoder" or "decoder" (default: the model's kind).
    Encoder keys: cos_min, cos_mean, cos_p5, cos_p50, retrieval_top{k}, spearman, and where the models
    truncate beyond max_tokens, cos_min_full_length / cos_mean_full_length on the texts joined by
    eights, each model cutting them at its own max_seq_length (full_length_tokens: the reference's).
    Decoder keys: kl, top1, ppl_compressed, ppl_reference, ppl_ratio. Both: kind, texts, tokens.
    """
    ref_rt = as_runner(reference, tokenizer)
    cmp_rt = as_runner(compressed, tokenizer, pooling=ref_rt.pooling)  # a bare model pools like its reference
    kind = kind or ref_rt.kind
    if kind not in ("encoder", "decoder"):
        raise ValueError(f"evaluate: kind={kind!r} is not 'encoder' or 'decoder'")
    if cmp_rt.kind != kind or ref_rt.kind != kind:
        raise ValueError(f"evaluate: kind={kind!r} but the compressed model is a {cmp_rt.kind} and the reference "
                         f"a {ref_rt.kind}")
    tok = ref_rt.tokenizer or cmp_rt.tokenizer or tokenizer
    if tok is None:
        raise ValueError("evaluate: neither model has a tokenizer; pass tokenizer=")
    texts, ids, mask, max_tokens = _tokenized(data, tok, max_tokens, min(ref_rt.max_seq_length, cmp_rt.max_seq_length))
    out: dict[str, Any] = {"kind": kind, "texts": len(texts), "tokens": int(mask.sum()), "max_tokens": max_tokens}
    d_ref, d_cmp = ("slimrt eval: reference", "slimrt eval: compressed") if progress else (None, None)
    if kind == "encoder":
        ref, cmp = _embeddings(ref_rt, ids, mask, batch_size, d_ref), _embeddings(cmp_rt, ids, mask, batch_size, d_cmp)
        out.update(metrics.cosine_stats(ref, cmp))
        if len(texts) > k:
            out[f"retrieval_top{k}"] = metrics.retrieval_agreement(ref, cmp, k)
        if len(texts) > 2:
            out["spearman"] = metrics.similarity_spearman(ref, cmp)
        # Long inputs, each model truncating at its own max_seq_length (sentence-transformers' setting
        # where it has one): a checkpoint that truncates elsewhere than its reference shows only here.
        if max(ref_rt.max_seq_length, cmp_rt.max_seq_length) > max_tokens:
            long_texts = [" ".join(texts[i:i + LONG_GROUP]) for i in range(0, len(texts), LONG_GROUP)]
            lr = ref_rt.embed(long_texts, batch_size=batch_size, normalize=False)
            lc = cmp_rt.embed(long_texts, batch_size=batch_size, normalize=False)
            long_stats = metrics.cosine_stats(lr, lc)
            out.update(full_length_tokens=ref_rt.max_seq_length, compressed_max_seq_length=cmp_rt.max_seq_length,
                       full_length_texts=len(long_texts), cos_min_full_length=long_stats["cos_min"],
                       cos_mean_full_length=long_stats["cos_mean"])
        return out
    out.update(_decoder_metrics(_hf_logits(ref_rt), _hf_logits(cmp_rt), ids, mask, batch_size,
                                "slimrt eval" if progress else None))
    return out


def _tokenized(data: Sequence[str] | None, tok: Any, max_tokens: int, model_max: int) -> tuple[list[str], Tensor, Tensor, int]:
    """(texts, ids, mask, max_tokens): the texts (default_texts() when data is None), checked, and their
    right-padded token ids cut at min(max_tokens, model_max)."""
    texts = default_texts() if data is None else list(data)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("evaluate: data must be a non-empty list of non-empty strings")
    if max_tokens < 2:
        raise ValueError(f"evaluate: max_tokens={max_tokens} must be >= 2")
    max_tokens = min(max_tokens, model_max)
    ids, mask = _tokenize(tok, texts, max_tokens)
    return texts, ids, mask, max_tokens


LogitsFn = Callable[[Tensor, Tensor], Tensor]  # (ids (B, T), mask (B, T)) -> next-token logits (B, T, V)


def _decoder_metrics(ref_logits: LogitsFn, cmp_logits: LogitsFn, ids: Tensor, mask: Tensor, batch_size: int,
                     desc: str | None) -> dict[str, float]:
    """kl, top1, ppl_compressed, ppl_reference, ppl_ratio over every real position, one batch at a time:
    only one batch's logits of each model are held (128 texts x 128 tokens of a 49152-word vocabulary
    would be 3.2 GB a model). Per batch, weighted by the positions scored, so padding never counts."""
    kl = top1 = nll_ref = nll_cmp = 0.0
    n_pos = n_next = 0
    for i, m in _batches(ids, mask, batch_size, desc):
        r, c = ref_logits(i, m), cmp_logits(i, m)
        if r.shape != c.shape:
            raise ValueError(f"evaluate: the models' logits differ in shape, {tuple(r.shape)} (reference) vs "
                             f"{tuple(c.shape)} (compressed); a vocabulary mismatch?")
        n, nn_ = int(m.sum()), int(m[:, 1:].sum())
        kl += metrics.kl_divergence(r, c, m) * n
        top1 += metrics.top1_agreement(r, c, m) * n
        if nn_:
            nll_ref += math.log(metrics.perplexity(r, i, m)) * nn_
            nll_cmp += math.log(metrics.perplexity(c, i, m)) * nn_
        n_pos, n_next = n_pos + n, n_next + nn_
    out = {"kl": kl / n_pos, "top1": top1 / n_pos}
    if n_next:
        out.update(ppl_compressed=math.exp(nll_cmp / n_next), ppl_reference=math.exp(nll_ref / n_next))
        out["ppl_ratio"] = out["ppl_compressed"] / out["ppl_reference"]
    return out


def evaluate_logits(logits: LogitsFn, reference: Any, data: Sequence[str] | None = None, *, tokenizer: Any = None,
                    max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 16, progress: bool = True,
                    max_length: int | None = None) -> dict[str, Any]:
    """``evaluate`` for a decoder that is not a torch model (llama.cpp in ``slimrt sweep --peer``).

    logits(ids, mask) -> (B, T, V) float32: the next-token logits of right-padded ids (B, T) (mask 1 on
    real tokens; padding positions are never scored). The reference (a decoder, as in ``evaluate``)
    tokenizes the text, so both see the same ids; max_length caps the tokens per text where the other
    model's context is shorter. Returns the decoder keys of ``evaluate``.
    """
    ref_rt = as_runner(reference, tokenizer)
    if ref_rt.kind != "decoder":
        raise ValueError(f"evaluate_logits: the reference is a {ref_rt.kind}; logits compare decoders")
    tok = ref_rt.tokenizer or tokenizer
    if tok is None:
        raise ValueError("evaluate_logits: the reference has no tokenizer; pass tokenizer=")
    model_max = min(ref_rt.max_seq_length, max_length or ref_rt.max_seq_length)
    texts, ids, mask, max_tokens = _tokenized(data, tok, max_tokens, model_max)
    out: dict[str, Any] = {"kind": "decoder", "texts": len(texts), "tokens": int(mask.sum()), "max_tokens": max_tokens}
    out.update(_decoder_metrics(_hf_logits(ref_rt), logits, ids, mask, batch_size,
                                "slimrt eval" if progress else None))
    return out


# ---- the quality gate ----------------------------------------------------------------------------

def gate(measured: dict[str, Any], min_cosine: float | None = None, max_kl: float | None = None) -> dict[str, Any]:
    """Checks measured metrics against thresholds; returns the record stored in slimrt.json
    (``{"thresholds", "measured", "passed": True}``) or raises QualityGateError with one line.

    min_cosine applies to encoders (against cos_min), max_kl to decoders (against kl).
    """
    kind = measured.get("kind")
    thresholds: dict[str, float] = {}
    if min_cosine is not None:
        if kind != "encoder":
            raise ValueError(f"--min-cosine applies to encoders; this model is a {kind}: use --max-kl")
        if not -1.0 <= min_cosine <= 1.0:
            raise ValueError(f"min_cosine={min_cosine} must be in [-1, 1]")
        thresholds["min_cosine"] = float(min_cosine)
        if not measured["cos_min"] >= min_cosine:  # NaN fails
            raise QualityGateError(f"quality gate: min cosine {measured['cos_min']:.4f} < required {min_cosine} "
                                   f"(mean {measured['cos_mean']:.4f} over {measured['texts']} texts); "
                                   "checkpoint not written")
    if max_kl is not None:
        if kind != "decoder":
            raise ValueError(f"--max-kl applies to decoders; this model is an {kind}: use --min-cosine")
        if not max_kl >= 0:
            raise ValueError(f"max_kl={max_kl} must be >= 0")
        thresholds["max_kl"] = float(max_kl)
        if not measured["kl"] <= max_kl:
            raise QualityGateError(f"quality gate: KL {measured['kl']:.4g} > allowed {max_kl} (top-1 agreement "
                                   f"{measured['top1']:.3f} over {measured['tokens']} tokens); checkpoint not written")
    return {"thresholds": thresholds, "measured": dict(measured), "passed": True}


def check_quality(model: nn.Module, reference: Any, tokenizer: Any = None, min_cosine: float | None = None,
                  max_kl: float | None = None, data: Sequence[str] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Evaluates ``model`` against ``reference``, applies ``gate`` and stores the record in
    ``model.slimrt_meta["quality"]`` (the checkpoint keeps it). Raises QualityGateError when missed."""
    measured = evaluate(model, reference, data, tokenizer=tokenizer, progress=progress)
    record = gate(measured, min_cosine, max_kl)
    record["data"] = "pydoc_data.topics eval split" if data is None else "user data"
    meta = getattr(model, "slimrt_meta", None)
    if meta is None:
        meta = model.slimrt_meta = {}
    meta["quality"] = record
    return record


def format_table(result: dict[str, Any]) -> str:
    """The metrics as aligned 'name  value' lines for people."""
    lines = []
    for key, val in result.items():
        shown = f"{val:.6f}" if isinstance(val, float) else str(val)
        lines.append(f"{key:<22} {shown}")
    return "\n".join(lines)


__all__ = ["evaluate", "evaluate_logits", "gate", "check_quality", "QualityGateError", "default_texts", "as_runner", "load_hf"]
