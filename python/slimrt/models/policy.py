"""KernelPolicy: which kernel an Int8Linear runs for a call with M rows (M = batch * tokens).

Three kernels compute an Int8Linear: "w8a8" (activations quantized per token, int8 GEMM: the
highest arithmetic rate, wins once M is large: prefill, batched embedding), "w8" (float
activations, weights dequantized on the fly: 4x fewer weight bytes than fp32 and no activation
quantization, wins at M = 1 decode where reading the weights is the whole cost), and "dense"
(F.linear on a dequantized fp32 copy: the uncompressed model's own speed, for shapes where
neither int8 kernel is faster). The choice is a pure function of (layer shape, M), so a given
call always runs the same kernel: outputs are reproducible run to run.

The default rule is one threshold, W8A8_MIN_M. ``tune`` measures all three kernels on this
machine for the model's layer shapes and returns per-shape rules; ``to_dict``/``from_dict``
store them so a deployment measures once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimrt.nn.int8_linear import Int8Linear

KERNELS = ("w8", "w8a8", "dense")

# Measured with benchmarks/bench_runner.py on the int8 branch's kernels (Xeon, AVX-512 VNNI, 1-2
# threads; see RESULTS.md). At M = 1 both kernels read one byte per weight: one layer timed in a
# loop (cache-resident) gives w8a8 5-15% ahead, but in the 12-layer decode loop, where weights
# stream from memory, the two tie end to end (w8 vs w8a8 at M = 1: 1114 vs 1160 ms and 994 vs
# 970 ms in two runs of 32+64 tokens), so M = 1 takes "w8", which skips the activation rounding
# at no measurable cost. From M = 2 on "w8a8" wins on every Llama-style shape (1.2x at M=2 up to
# 3-4x at M=16 over w8; on forced AVX2 too).
W8A8_MIN_M = 2

Rules = tuple[tuple[int, str], ...]  # ((m_min, kernel), ...) ascending m_min, the first m_min is 1


@dataclass(frozen=True)
class KernelPolicy:
    """mode "auto": per-shape rules (``per_shape``: (out, in) -> Rules) or else "w8" below
    ``w8a8_min_m`` and "w8a8" from it on, never "w8a8" for a module whose own mode is "w8";
    "module": each module's own mode (what the Hugging Face forward runs); "w8a8" / "w8" /
    "dense": one kernel everywhere."""

    mode: str = "auto"
    w8a8_min_m: int = W8A8_MIN_M
    per_shape: Mapping[tuple[int, int], Rules] = field(default_factory=dict)
    # The threshold rule only uses kernels the device has a real kernel for: an int8 op served
    # by the PyTorch reference (no native extension, SLIMRT_BACKEND=reference, a GPU without
    # Triton) dequantizes the whole weight per call and is far slower than fp32, so "dense" is used
    # instead (at the memory cost of an fp32 copy). False keeps the threshold rule as written.
    fallback: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "module", *KERNELS):
            raise ValueError(f"KernelPolicy: mode={self.mode!r} is not one of auto, module, {', '.join(KERNELS)}")
        if not isinstance(self.w8a8_min_m, int) or self.w8a8_min_m < 1:
            raise ValueError(f"KernelPolicy: w8a8_min_m={self.w8a8_min_m!r} must be an integer >= 1")
        for shape, rules in self.per_shape.items():
            ok = (len(rules) > 0 and rules[0][0] == 1 and all(k in KERNELS for _, k in rules)
                  and all(a[0] < b[0] for a, b in zip(rules, rules[1:])))
            if not ok:
                raise ValueError(f"KernelPolicy: rules for shape {shape} must be ((1, kernel), (m, kernel), ...) "
                                 f"with ascending m and kernels in {KERNELS}, got {rules!r}")

    def rules(self, module: Int8Linear) -> Rules:
        if self.mode == "module":
            return ((1, module.mode),)
        if self.mode != "auto":
            return ((1, self.mode),)
        rules = self._auto_rules(module)
        if getattr(module, "mode", "w8a8") == "w8":
            # A layer compressed as weight-only (the compressor keeps activations in float where
            # quantizing them costs too much accuracy) never runs W8A8; w8 and dense are the same math.
            rules = tuple((m, "w8" if k == "w8a8" else k) for m, k in rules)
            rules = tuple(r for i, r in enumerate(rules) if i == 0 or r[1] != rules[i - 1][1])
        return rules

    def _auto_rules(self, module: Int8Linear) -> Rules:
        found = self.per_shape.get((module.out_features, module.in_features))
        if found:
            return found
        if not self.fallback:
            return ((1, "w8"), (self.w8a8_min_m, "w8a8"))
        served = device_kernels(module.w_q.device.type)
        if served == {"w8", "w8a8"}:
            return ((1, "w8"), (self.w8a8_min_m, "w8a8"))
        return ((1, next(iter(served))),) if served else ((1, "dense"),)

    def kernel(self, module: Int8Linear, m: int) -> str:
        """The kernel a call with ``m`` rows runs."""
        kernel = "w8"
        for m_min, k in self.rules(module):
            if m >= m_min:
                kernel = k
        return kernel

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "w8a8_min_m": self.w8a8_min_m, "fallback": self.fallback,
                "per_shape": [{"out": n, "in": k, "rules": [list(r) for r in rules]}
                              for (n, k), rules in sorted(self.per_shape.items())]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KernelPolicy":
        per_shape = {(int(e["out"]), int(e["in"])): tuple((int(m), str(k)) for m, k in e["rules"])
                     for e in d.get("per_shape", [])}
        return cls(mode=str(d.get("mode", "auto")), w8a8_min_m=int(d.get("w8a8_min_m", W8A8_MIN_M)),
                   per_shape=per_shape, fallback=bool(d.get("fallback", True)))


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_OPS = {"w8a8": "slimrt::int8_linear", "w8": "slimrt::int8_weight_only_linear"}


@functools.lru_cache(maxsize=None)
def device_kernels(device_type: str) -> frozenset[str]:
    """The int8 kernels ("w8", "w8a8") that have a kernel registered for this device type,
    as opposed to only the PyTorch reference (CompositeExplicitAutograd)."""
    key = _DISPATCH_KEYS.get(device_type)
    if key is None:
        return frozenset()
    return frozenset(k for k, op in _OPS.items() if torch._C._dispatch_has_kernel_for_dispatch_key(op, key))


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (packing, allocator, thread pool)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def measure_shape(modules: Sequence[Int8Linear], ms: Sequence[int], reps: int = 5,
                  rotate_bytes: int = 32 << 20) -> dict[int, dict[str, float]]:
    """Median ms per call of each kernel at each M for one layer shape: {M: {kernel: ms}}.

    Each repetition calls a run of same-shape layers in turn (up to ``rotate_bytes`` of int8
    weights), as the decode loop does: a single layer timed in a loop stays cache-resident and
    flatters the compute-heavier kernel, while in a real model the weights stream from memory.
    """
    per = modules[0].w_q.numel()
    mods = list(modules[:max(1, min(len(modules), rotate_bytes // max(per, 1)))])
    dense = [(m.dequantized_weight(), None if m.bias is None else m.bias.float()) for m in mods]
    out: dict[int, dict[str, float]] = {}
    with torch.inference_mode():
        for m in ms:
            x = torch.randn(m, mods[0].in_features, device=mods[0].w_q.device)

            def run(kernel: str) -> None:
                if kernel == "dense":
                    for w, b in dense:
                        F.linear(x, w, b)
                else:
                    for mod in mods:
                        mod(x, kernel)

            out[m] = {k: _median_ms(lambda: run(k), reps) / len(mods) for k in KERNELS}
    return out


def rules_from_timings(timings: Mapping[int, Mapping[str, float]], margin: float = 0.9) -> Rules:
    """Rules from measured {M: {kernel: ms}}: the fastest int8 kernel per M, with hysteresis.

    Going from one measured M to the next keeps the previous kernel unless another is faster by
    ``1 - margin`` (near-ties are noise, and a flip-flopping table is worse than either kernel);
    dense is taken only if it beats both int8 kernels by that margin (it costs a 4-byte copy of
    the weight). M between two measured points takes the kernel of the lower one.
    """
    rules: list[tuple[int, str]] = []
    for m in sorted(timings):
        t = timings[m]
        best = min(("w8", "w8a8"), key=lambda k: t[k])
        if rules and rules[-1][1] in ("w8", "w8a8") and t[best] >= margin * t[rules[-1][1]]:
            best = rules[-1][1]
        if t["dense"] < margin * t[best]:
            best = "dense"
        if not rules or rules[-1][1] != best:
            rules.append((1 if not rules else m, best))
    return tuple(rules)


def tune(model: nn.Module, ms: Sequence[int] = (1, 4, 16, 64), reps: int = 5, max_flop: float = 2e9,
         log: Any = None) -> KernelPolicy:
    """Measures every Int8Linear shape in ``model`` and returns a KernelPolicy with per-shape rules.

    M values whose call would exceed ``max_flop`` (2*M*N*K) are skipped for that shape (an LM head
    never sees a large M: only the last position is projected).
    """
    shapes: dict[tuple[int, int], list[Int8Linear]] = {}
    for mod in model.modules():
        if isinstance(mod, Int8Linear):
            shapes.setdefault((mod.out_features, mod.in_features), []).append(mod)
    per_shape = {}
    for (n, k), mods in shapes.items():
        sizes = [m for m in ms if m == min(ms) or 2 * m * n * k <= max_flop]
        timings = measure_shape(mods, sizes, reps)
        per_shape[(n, k)] = rules_from_timings(timings)
        if log is not None:
            log(f"tune {n}x{k}: " + ", ".join(
                f"M={m} " + "/".join(f"{kk} {v:.3f}" for kk, v in t.items()) for m, t in timings.items())
                + f" ms -> {per_shape[(n, k)]}")
    return KernelPolicy(mode="auto", per_shape=per_shape)


def with_w8_at_m1(policy: KernelPolicy) -> KernelPolicy:
    """``policy`` with every per-shape rule set running "w8" at M = 1 (the rest of each set kept).

    The native batch-1 decode step (models.decode_step) needs "w8" at M = 1 in every layer; per-layer
    timing (``tune``) cannot see that one native call per token beats any per-layer choice."""
    pinned = {}
    for shape, rules in policy.per_shape.items():
        if rules[0][1] == "w8":
            pinned[shape] = rules
            continue
        rest = rules[1:] if len(rules) > 1 and rules[1][0] == 2 else ((2, rules[0][1]),) + rules[1:]
        merged = ((1, "w8"),) + rest
        pinned[shape] = tuple(r for i, r in enumerate(merged) if i == 0 or r[1] != merged[i - 1][1])
    return KernelPolicy(mode=policy.mode, w8a8_min_m=policy.w8a8_min_m, per_shape=pinned, fallback=policy.fallback)
