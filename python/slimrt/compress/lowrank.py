"""Method "lowrank": nn.Linear / Conv1D -> LowRankLinear, W (N, K) ~= u (N, R) @ v (R, K).

The math (float64 throughout):
  svd     plain truncated SVD: the best rank R in ||W - W'||_F, blind to the inputs.
  whiten  activation-aware (SVD-LLM): minimize the output error ||(W - W') X^T||_F over calibration
          inputs X (T, K). With the Gram matrix G = X^T X = S S^T, that error is ||(W - W') S||_F, so
          take the SVD of W S = U diag(s) Q^T, keep R terms and un-whiten: W' = U_R diag(s_R) Q_R^T S^-1.
          The dropped s_i^2 are exactly the lost output energy on the calibration data.
          S is the Cholesky factor of G; a rank-deficient or indefinite G (fewer tokens than K, dead
          channels) gets damping G + d * mean(diag G) * I (d = 1e-2, raised x10 until it factors),
          and as a last resort an eigen-decomposition with clamped eigenvalues.
  asvd    ASVD-style scaling: S = diag(rms(x_k)^alpha), a cheap diagonal whitening.
Rank: a fixed rank, the smallest rank keeping an energy fraction of the (whitened) spectrum, or a
model-wide parameter ratio, spread over the layers greedily by error reduction per parameter
("greedy") or as the same fraction of every layer ("uniform").
A layer whose rank-R factors would not be smaller than dense (R (N + K) >= N K) stays dense, with
that reason in the report.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from slimrt.compress.int8 import kernel_name  # also registers "w8", which the lowrank-0.5+w8 preset names
from slimrt.compress.swap import Context, Fallback, Method, check_finite, is_linear_like, linear_weight, register
from slimrt.recipe import Recipe, register_preset

METHODS = ("whiten", "asvd", "svd")
DAMP = 1e-2
# A Cholesky pivot below this fraction of the mean diagonal means the Gram is numerically singular.
_PIVOT_FLOOR = 1e-10


# ---- decomposition -----------------------------------------------------------------------------

@dataclass
class Decomposition:
    """W ~= U_R diag(s_R) vh_R for any R: u (N, k), s (k,) descending, vh (k, K) already un-whitened.
    s are the singular values of W S (S = I for plain SVD): sum(s[R:]^2) is the error at rank R."""

    u: Tensor
    s: Tensor
    vh: Tensor
    note: str

    def factors(self, rank: int) -> tuple[Tensor, Tensor]:
        """(u (N, R), v (R, K)) float32, sqrt(s) split into both for balanced int8 ranges."""
        root = self.s[:rank].sqrt()
        return (self.u[:, :rank] * root).float(), (root.unsqueeze(1) * self.vh[:rank]).float()

    def rel_error(self, rank: int) -> float:
        """sqrt(dropped energy / total energy) at this rank (the relative output error for whiten)."""
        e = self.s.double() ** 2
        total = float(e.sum())
        return math.sqrt(float(e[rank:].sum()) / total) if total > 0 else 0.0


def whitening(gram: Tensor, damp: float = DAMP) -> tuple[Tensor, Callable[[Tensor], Tensor], str] | None:
    """S with S S^T = G (possibly damped), a function computing A S^-1, and how S was obtained.
    None when G is all zeros (no activation reached the layer: nothing to weight by)."""
    g = gram.double()
    g = (g + g.T) / 2
    k = g.shape[0]
    mean_diag = float(g.diagonal().mean()) if k else 0.0
    if not mean_diag > 0:
        return None
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    for d in (0.0, damp, damp * 10, damp * 100):
        s, info = torch.linalg.cholesky_ex(g + d * mean_diag * eye)
        if int(info) == 0 and float(s.diagonal().min()) ** 2 >= _PIVOT_FLOOR * mean_diag:
            note = "cholesky" if d == 0 else f"cholesky, damped {d:g} x mean diag"

            def apply_inv(a: Tensor, s: Tensor = s) -> Tensor:  # a (r, K) -> a S^-1
                return torch.linalg.solve_triangular(s, a, upper=False, left=False)
            return s, apply_inv, note
    lam, q = torch.linalg.eigh(g)
    lam = lam.clamp_min(max(float(lam.max()), 0.0) * 1e-6 + 1e-300)
    root = lam.sqrt()
    return q * root, (lambda a: (a / root) @ q.T), "eigh, clamped eigenvalues"


def decompose(weight: Tensor, gram: Tensor | None = None, method: str = "whiten", damp: float = DAMP,
              alpha: float = 0.5) -> Decomposition:
    """SVD of weight (N, K), plain or weighted by the input Gram matrix gram (K, K) = X^T X."""
    if method not in METHODS:
        raise ValueError(f"lowrank: method {method!r} is not one of {METHODS}")
    w = weight.detach().double()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("lowrank: weight holds NaN or Inf")
    if gram is not None:
        if gram.shape != (w.shape[1], w.shape[1]):
            raise ValueError(f"lowrank: gram is {tuple(gram.shape)} but the weight has K = {w.shape[1]}")
        if not bool(torch.isfinite(gram).all()):
            raise ValueError("lowrank: the activation Gram matrix holds NaN or Inf")
    if method == "svd" or gram is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return Decomposition(u, s, vh, "plain SVD" if method == "svd" else f"plain SVD ({method}: no calibration)")
    if method == "asvd":
        rms = gram.double().diagonal().clamp_min(0).sqrt()
        if not float(rms.max()) > 0:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            return Decomposition(u, s, vh, "plain SVD (asvd: all-zero activations)")
        scale = rms.clamp_min(float(rms.max()) * 1e-6) ** alpha
        u, s, vh = torch.linalg.svd(w * scale, full_matrices=False)
        return Decomposition(u, s, vh / scale, f"asvd, alpha={alpha:g}")
    wh = whitening(gram, damp)
    if wh is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return Decomposition(u, s, vh, "plain SVD (whiten: all-zero activations)")
    s_mat, apply_inv, note = wh
    u, s, qh = torch.linalg.svd(w @ s_mat, full_matrices=False)
    return Decomposition(u, s, apply_inv(qh), f"whitened SVD ({note})")


# ---- rank selection ----------------------------------------------------------------------------

def max_useful_rank(n: int, k: int) -> int:
    """Largest R whose factors R (N + K) are strictly fewer numbers than the dense N K."""
    return (n * k - 1) // (n + k)


def dense_reason(n: int, k: int, rank: int) -> str | None:
    """Why a rank-R factorization of an (N, K) layer is not worth storing, or None if it is."""
    if rank * (n + k) >= n * k:
        return (f"rank {rank} factors hold {rank * (n + k):,} numbers, not fewer than the dense "
                f"{n:,} x {k:,} = {n * k:,}")
    return None


def rank_for_energy(s: Tensor, energy: float) -> int:
    """Smallest R >= 1 whose top-R singular values keep this fraction of sum(s^2)."""
    e = s.double() ** 2
    total = float(e.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(e, 0) / total
    return max(1, min(int((kept < energy - 1e-12).sum()) + 1, s.numel()))


def uniform_ranks(layers: Mapping[str, tuple[Tensor, int, int]], ratio: float) -> dict[str, int]:
    """The same fraction of every layer: R = floor(ratio N K / (N + K)), at least 1, at most min(N, K)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"lowrank: ratio={ratio!r} must be in (0, 1]")
    return {name: max(1, min(int(ratio * n * k / (n + k)), n, k)) for name, (_, n, k) in layers.items()}


def allocate_ranks(layers: Mapping[str, tuple[Tensor, int, int]], ratio: float,
                   relative: bool = True) -> dict[str, int | None]:
    """Ranks for {name: (singular values s, N, K)} so the layers' weights hold at most ratio x their
    dense count, with the smallest sum of errors: each layer's dropped s^2 over its total (relative)
    or the dropped s^2 themselves (relative=False: for whitened spectra, the summed output error).

    Greedy by error reduction per parameter: every layer starts at rank 1; the next move of a layer
    is +1 rank (cost N + K, gain s_R^2) or, once more rank would not be smaller than dense, going
    dense (cost N K - R (N + K), gain the rest). Gains per layer only shrink, so this is the optimal
    fill of the concave part. Returns {name: rank, or None for "stays dense"}.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"lowrank: ratio={ratio!r} must be in (0, 1]")
    budget = ratio * sum(n * k for _, n, k in layers.values())
    rel = {}
    for name, (s, n, k) in layers.items():
        e = s.double() ** 2
        if not relative:
            rel[name] = e.tolist()
        else:
            rel[name] = (e / e.sum()).tolist() if float(e.sum()) > 0 else [0.0] * s.numel()
    rank = {name: 1 for name in layers}
    dense: set[str] = set()
    used = sum(n + k for _, n, k in layers.values())
    if used > budget:
        raise ValueError(f"lowrank: ratio={ratio} allows {budget:,.0f} weights, but rank 1 in every selected "
                         f"layer already needs {used:,}; raise the ratio or select fewer layers")

    def next_move(name: str) -> tuple[float, int, float] | None:
        s, n, k = layers[name]
        r = rank[name]
        if r < min(max_useful_rank(n, k), s.numel()):
            gain, cost = rel[name][r], n + k
        else:
            gain, cost = sum(rel[name][r:]), n * k - r * (n + k)
        if gain <= 0:
            return None
        return (-gain / cost, cost, gain)

    heap = []
    for name in layers:
        mv = next_move(name)
        if mv:
            heap.append((mv[0], name, mv[1]))
    heapq.heapify(heap)
    while heap:
        _, name, cost = heapq.heappop(heap)
        if used + cost > budget:
            continue  # this layer cannot grow within the budget; smaller moves of others still may
        used += cost
        s, n, k = layers[name]
        if rank[name] < min(max_useful_rank(n, k), s.numel()):
            rank[name] += 1
            mv = next_move(name)
            if mv:
                heapq.heappush(heap, (mv[0], name, mv[1]))
        else:
            dense.add(name)
    return {name: (None if name in dense else r) for name, r in rank.items()}


# ---- calibration: input Gram matrices ----------------------------------------------------------

def collect_input_gram(model: nn.Module, modules: Sequence[nn.Module], names: Sequence[str],
                       calibration: Iterable[Any], tokenizer: Any = None,
                       progress: bool = True) -> dict[str, Tensor]:
    """{name: X^T X (K, K) float64} of each listed module's input over the calibration batches
    (see slimrt.compress.calibration for the batch kinds). NaN/Inf in a Gram is a ValueError."""
    from slimrt.compress.calibration import observe_inputs

    def gram(x: Tensor) -> Tensor:
        x2 = x.double()  # (T, K)
        return x2.T @ x2

    return observe_inputs(model, {n: (m, gram) for m, n in zip(modules, names)}, calibration, tokenizer,
                          combine="sum", progress=progress, desc="slimrt lowrank calibration")


# ---- the "lowrank" method ----------------------------------------------------------------------

def _in(options: Sequence[str]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"expected one of {', '.join(options)}"


PARAMS = {
    "ratio": (float, 0.5, lambda v: None if 0 < v <= 1 else "expected a fraction in (0, 1]"),
    "rank": (int, 0, lambda v: None if v >= 0 else "expected 0 (unused) or a positive rank"),
    "energy": (float, 0.0, lambda v: None if 0 <= v <= 1 else "expected 0 (unused) or a fraction in (0, 1]"),
    "method": (str, "whiten", _in(METHODS)),
    # How a ratio is spread: "greedy" by each layer's (whitened) spectrum (allocate_ranks), or
    # "uniform", the same fraction of every layer (uniform_ranks). On MiniLM at ratio 0.5 uniform
    # kept the embeddings closer (benchmarks/RESULTS.md); greedy wins where spectra differ a lot.
    "allocation": (str, "greedy", _in(("greedy", "uniform"))),
    "factor_dtype": (str, "float32", _in(("float32", "bfloat16"))),
    "damp": (float, DAMP, lambda v: None if v > 0 else "expected a positive number"),
    "alpha": (float, 0.5, lambda v: None if 0 <= v <= 1 else "expected a number in [0, 1]"),
}


def _int8_mode(ctx: Context) -> str | None:
    """'w8'/'w8a8' when that method follows lowrank in the recipe: the factors are then stored in int8
    right here (the later pass only sees the layers that stayed dense)."""
    methods = list(ctx.recipe.methods)
    later = methods[methods.index("lowrank") + 1:] if "lowrank" in methods else []
    return next((m for m in later if m in ("w8", "w8a8")), None)


def _prepare(model: nn.Module, todo: list[tuple[str, nn.Module]], ctx: Context, calibration: Iterable[Any] | None,
             tokenizer: Any, progress: bool) -> None:
    """Decomposes every selected layer and picks all ranks at once (the budget is model-wide)."""
    p = ctx.params
    grams: dict[str, Tensor] = {}
    if p["method"] != "svd":
        if calibration is None:
            raise ValueError(f"compress: lowrank method {p['method']!r} weights the SVD by activations and needs "
                             "calibration data (calibration=[batches], or --calibration FILE on the command line); "
                             "or set params lowrank.method='svd'")
        grams = collect_input_gram(model, [m for _, m in todo], [n for n, _ in todo], calibration, tokenizer,
                                   progress)
    decs: dict[str, Decomposition] = {}
    plan: dict[str, tuple[int | None, str]] = {}
    for name, module in todo:
        weight, bias = linear_weight(module)
        n, k = weight.shape
        if n == 0 or k == 0 or weight.device.type == "meta":
            plan[name] = (None, f"zero-size or unloaded weight (N, K) = ({n}, {k})")
            continue
        if max_useful_rank(n, k) < 1:
            plan[name] = (None, dense_reason(n, k, 1) or "too small to factorize")
            continue
        check_finite(name, "weight", weight)
        decs[name] = decompose(weight, grams.get(name), p["method"], p["damp"], p["alpha"])
        if p["method"] != "svd" and name not in grams:
            decs[name].note += "; no calibration batch reached this layer"
    if p["rank"] > 0 or p["energy"] > 0:
        for name, dec in decs.items():
            n, k = dec.u.shape[0], dec.vh.shape[1]
            r = min(p["rank"], n, k) if p["rank"] > 0 else rank_for_energy(dec.s, p["energy"])
            reason = dense_reason(n, k, r)
            plan[name] = (None, reason) if reason else (r, "")
    elif p["allocation"] == "uniform":
        for name, r in uniform_ranks({nm: (d.s, d.u.shape[0], d.vh.shape[1]) for nm, d in decs.items()},
                                     p["ratio"]).items():
            reason = dense_reason(decs[name].u.shape[0], decs[name].vh.shape[1], r)
            plan[name] = (None, reason) if reason else (r, "")
    else:
        ranks = allocate_ranks({nm: (d.s, d.u.shape[0], d.vh.shape[1]) for nm, d in decs.items()}, p["ratio"])
        for name, r in ranks.items():
            plan[name] = (r, "") if r is not None else (
                None, f"the model-wide budget (ratio {p['ratio']}) is best spent keeping this layer dense")
    ctx.state["lowrank"] = {"decompositions": decs, "plan": plan}


def _convert(name: str, module: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    from slimrt.nn.lowrank_linear import FACTOR_DTYPES, LowRankLinear

    state = ctx.state.get("lowrank", {})
    rank, reason = state.get("plan", {}).get(name, (None, "not planned (lowrank preparation did not see it)"))
    if rank is None:
        raise Fallback(reason)
    dec = state["decompositions"][name]
    weight, bias = linear_weight(module)
    if bias is not None:
        check_finite(name, "bias", bias)
    u, v = dec.factors(rank)
    mode = _int8_mode(ctx)
    new = LowRankLinear.from_factors(u.to(weight.device), v.to(weight.device), bias,
                                     factor_dtype=FACTOR_DTYPES[ctx.params["factor_dtype"]],
                                     quantized=mode is not None, mode=mode or "w8a8")
    new.train(module.training)
    if mode is None:
        from slimrt import ops

        impl = ops.backend().get(weight.device.type, "reference")
        if impl == "native":
            from slimrt import _native

            impl = f"native:{_native.load().active_isa()}"
        kernel = f"lowrank_linear[{impl}]"
    else:
        kernel = "2 x " + kernel_name(mode, weight.device)
    n, k = weight.shape
    return new, {"kernel": kernel, "in_features": k, "out_features": n, "rank": rank,
                 "factors": f"int8 ({mode})" if mode else ctx.params["factor_dtype"], "decomposition": dec.note,
                 "est_rel_error": round(dec.rel_error(rank), 6)}


register(Method(name="lowrank", group="factorize", accepts=is_linear_like, convert=_convert, params=PARAMS,
                uses_calibration=lambda recipe: recipe.params.get("lowrank", {}).get("method", "whiten") != "svd",
                prepare=_prepare))

# Half the linear-layer weights, activation-aware SVD (needs calibration), the same fraction of every
# layer (closer MiniLM embeddings at 0.5 than the greedy spread; see benchmarks/RESULTS.md); "+w8"
# stores the factors (and the layers kept dense) in int8.
_HALF = {"lowrank": {"ratio": 0.5, "method": "whiten", "allocation": "uniform"}}
register_preset("lowrank-0.5", Recipe(methods=("lowrank",), params=_HALF))
register_preset("lowrank-0.5+w8", Recipe(methods=("lowrank", "w8"), params=_HALF))
