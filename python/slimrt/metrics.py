"""Quality metrics comparing a compressed model's outputs with the original's.

Pure functions over tensors, so each can be checked against hand-computed values. Encoders are
judged on their embeddings (cosine, retrieval agreement, rank correlation of similarities);
decoders on their next-token distributions (KL, top-1 agreement, perplexity).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError(f"{name}: empty input")


def cosine_stats(ref: Tensor, cmp: Tensor) -> dict[str, float]:
    """Row-wise cosine similarity of ref (n, d) and cmp (n, d): min, mean, 5th percentile, median."""
    _check_pair("cosine_stats", ref, cmp)
    cos = F.cosine_similarity(ref.double(), cmp.double(), dim=-1)
    return {
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
        "cos_p5": float(torch.quantile(cos, 0.05)),
        "cos_p50": float(torch.quantile(cos, 0.5)),
    }


def _neighbours(emb: Tensor, k: int) -> Tensor:
    e = F.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-math.inf)  # a document is not its own neighbour
    return sim.topk(k, dim=-1).indices


def retrieval_agreement(ref: Tensor, cmp: Tensor, k: int = 5) -> float:
    """Mean over rows of |top-k neighbours under ref  ∩  top-k under cmp| / k (cosine, self excluded)."""
    _check_pair("retrieval_agreement", ref, cmp)
    n = ref.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"retrieval_agreement: k={k} must be in [1, {n - 1}] for {n} embeddings")
    a, b = _neighbours(ref, k), _neighbours(cmp, k)
    hits = [len(set(a[i].tolist()) & set(b[i].tolist())) for i in range(n)]
    return sum(hits) / (n * k)


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = x.argsort()
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    uniq, inverse = torch.unique(x, return_inverse=True)
    if uniq.numel() != x.numel():
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
        counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors."""
    _check_pair("spearman", x, y)
    rx, ry = _ranks(x.flatten().double()), _ranks(y.flatten().double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def similarity_spearman(ref: Tensor, cmp: Tensor) -> float:
    """Spearman correlation between the pairwise cosine similarities under ref and under cmp."""
    _check_pair("similarity_spearman", ref, cmp)
    n = ref.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    a, b = F.normalize(ref.double(), dim=-1), F.normalize(cmp.double(), dim=-1)
    return spearman((a @ a.T)[iu[0], iu[1]], (b @ b.T)[iu[0], iu[1]])


def kl_divergence(ref_logits: Tensor, cmp_logits: Tensor, mask: Tensor | None = None) -> float:
    """Mean over positions of KL(P_ref || P_cmp) of next-token distributions, logits (..., V)."""
    _check_pair("kl_divergence", ref_logits, cmp_logits)
    lp = F.log_softmax(ref_logits.double(), dim=-1)
    lq = F.log_softmax(cmp_logits.double(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    if mask is not None:
        return float(kl[mask.bool()].mean())
    return float(kl.mean())


def top1_agreement(ref_logits: Tensor, cmp_logits: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of positions where both models' most likely next token is the same."""
    _check_pair("top1_agreement", ref_logits, cmp_logits)
    same = (ref_logits.argmax(-1) == cmp_logits.argmax(-1)).double()
    if mask is not None:
        return float(same[mask.bool()].mean())
    return float(same.mean())


def perplexity(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> float:
    """exp(mean next-token cross-entropy): logits (B, T, V) predict input_ids[:, 1:]."""
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(f"perplexity: logits {tuple(logits.shape)} do not match input_ids {tuple(input_ids.shape)}")
    nll = F.cross_entropy(logits[:, :-1].double().transpose(1, 2), input_ids[:, 1:], reduction="none")
    if mask is not None:
        m = mask[:, 1:].bool()
        return math.exp(float(nll[m].mean()))
    return math.exp(float(nll.mean()))
