"""LowRankLinear: a drop-in for nn.Linear that stores and computes W ~= U @ V with rank R.

It stores u (N, R) and v (R, K), R (N + K) numbers instead of N K, and runs
y = (x @ v.T) @ u.T + bias as one fused op. With ``quantized=True`` the factors are int8 with one
fp32 scale per row (u per output channel, v per rank channel) and the two products run as two int8
linears (the int8 GEMM), with an x.dtype intermediate between them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimrt import ops
from slimrt.nn import _train

FACTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INT8_MODES = ("w8a8", "w8")


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _kernel_layout(f: Tensor) -> Tensor:
    """f (A, B) re-stored as the transpose of a contiguous (B, A): same values and shape, the layout
    the fused kernel reads without copying (see csrc/lowrank_matmul/lowrank_matmul.h)."""
    if f.dim() == 2 and f.shape[0] > 1 and f.stride(0) == 1 and f.stride(1) == f.shape[0]:
        return f
    return f.detach().t().contiguous().t()


def factor_linear(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD of weight (N, K) -> u (N, R), v (R, K) fp32 with weight ~= u @ v, the best rank-R
    approximation in Frobenius norm. The singular values are split as sqrt into both factors so that
    u and v have similar ranges (which keeps their int8 quantization balanced)."""
    w = weight.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("factor_linear: weight has NaN or Inf")
    uu, s, vh = torch.linalg.svd(w, full_matrices=False)  # (N, k), (k,), (k, K) with k = min(N, K)
    root = s[:rank].sqrt()
    return uu[:, :rank] * root, root.unsqueeze(1) * vh[:rank]


class LowRankLinear(nn.Module):
    """y = x @ (u @ v).T + b with u (N, R), v (R, K).

    factor_dtype float32|bfloat16 (factors and the activations they multiply share a dtype; inputs of
    another float dtype are cast to it and the output cast back). quantized=True stores u_q/v_q int8
    with u_scale (N,) / v_scale (R,) fp32 and runs two int8 linears, mode "w8a8" (activations
    quantized per token) or "w8" (weight-only). State keys: u, v (or u_q, u_scale, v_q, v_scale), bias.

    Training (slimrt.distill): when autograd is on and x or a ``TRAINABLE`` tensor requires grad,
    forward runs the same function in plain PyTorch (nn/_train.py): float factors u, v train;
    int8 factors stay fixed while u_scale, v_scale train (w8a8 activation rounding passes gradients
    straight through); the bias trains in both.
    """

    TRAINABLE = ("u", "v", "u_scale", "v_scale", "bias")
    POSITIVE_TENSORS = ("u_scale", "v_scale")  # refused at load unless finite and > 0 (checkpoint/loader.py)

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 factor_dtype: torch.dtype = torch.float32, quantized: bool = False, mode: str = "w8a8",
                 device: Any = None, bias_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for name, val in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"LowRankLinear: {name}={val!r} must be a positive int")
        if rank > min(in_features, out_features):
            raise ValueError(f"LowRankLinear: rank={rank} exceeds min(in_features, out_features) = "
                             f"{min(in_features, out_features)}; such a factorization cannot be smaller than dense")
        if factor_dtype not in FACTOR_DTYPES.values():
            raise TypeError(f"LowRankLinear: factor_dtype {_dtype_name(factor_dtype)} is not one of float32, bfloat16")
        if mode not in INT8_MODES:
            raise ValueError(f"LowRankLinear: mode={mode!r} is not one of {INT8_MODES}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.factor_dtype, self.quantized, self.mode = factor_dtype, bool(quantized), mode
        n, k, r = out_features, in_features, rank
        if self.quantized:
            self.register_buffer("u_q", torch.zeros(n, r, dtype=torch.int8, device=device))
            self.register_buffer("u_scale", torch.ones(n, dtype=torch.float32, device=device))
            self.register_buffer("v_q", torch.zeros(r, k, dtype=torch.int8, device=device))
            self.register_buffer("v_scale", torch.ones(r, dtype=torch.float32, device=device))
            for name in ("u_packed", "v_packed"):
                self.register_buffer(name, torch.empty(0, dtype=torch.int8, device=device), persistent=False)
        else:
            # Stored transposed (u = ut.T, v = vt.T): the layout the fused kernel reads in place.
            self.register_buffer("u", torch.zeros(r, n, dtype=factor_dtype, device=device).t())
            self.register_buffer("v", torch.zeros(k, r, dtype=factor_dtype, device=device).t())
        if bias:
            self.register_buffer("bias", torch.zeros(n, dtype=bias_dtype, device=device))
        else:
            self.bias = None
        self.register_load_state_dict_pre_hook(self._check_incoming)
        self.register_load_state_dict_post_hook(lambda module, keys: module.relayout())
        self.register_state_dict_post_hook(self._contiguous_state)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_factors(cls, u: Tensor, v: Tensor, bias: Tensor | None = None,
                     factor_dtype: torch.dtype = torch.float32, quantized: bool = False,
                     mode: str = "w8a8") -> "LowRankLinear":
        """Builds the module from given factors u (N, R), v (R, K) (e.g. from slimrt.compress.lowrank)."""
        if u.dim() != 2 or v.dim() != 2 or u.shape[1] != v.shape[0]:
            raise ValueError(f"LowRankLinear.from_factors: u {tuple(u.shape)} and v {tuple(v.shape)} "
                             "are not (N, R) and (R, K)")
        for name, f in (("u", u), ("v", v)):
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"LowRankLinear.from_factors: {name} has NaN or Inf")
        n, r = u.shape
        mod = cls(v.shape[1], n, r, bias is not None, factor_dtype, quantized, mode, device=u.device)
        with torch.no_grad():
            if quantized:
                u_q, u_s = ops.quantize_per_channel(u.float())
                v_q, v_s = ops.quantize_per_channel(v.float())
                mod.u_q.copy_(u_q)
                mod.u_scale.copy_(u_s)
                mod.v_q.copy_(v_q)
                mod.v_scale.copy_(v_s)
            else:
                mod.u.copy_(u)
                mod.v.copy_(v)
            if bias is not None:
                mod.bias.copy_(bias.detach().float())
        mod.relayout()
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, factor_dtype: torch.dtype = torch.float32,
                    quantized: bool = False, mode: str = "w8a8") -> "LowRankLinear":
        """Factors an nn.Linear by truncated SVD at the given rank (see slimrt.compress.lowrank for
        activation-aware factors and rank selection)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LowRankLinear.from_linear expects nn.Linear, got {type(linear).__name__}")
        lim = min(linear.in_features, linear.out_features)
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= lim:
            raise ValueError(f"LowRankLinear.from_linear: rank={rank!r} must be an int in [1, {lim}]")
        u, v = factor_linear(linear.weight, rank)
        b = None if linear.bias is None else linear.bias.detach()
        return cls.from_factors(u, v, b, factor_dtype, quantized, mode)

    # ---- checkpoint protocol -----------------------------------------------------------------
    def slimrt_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None, "factor_dtype": _dtype_name(self.factor_dtype),
                "quantized": self.quantized, "mode": self.mode,
                "bias_dtype": _dtype_name(self.bias.dtype) if self.bias is not None else "float32"}

    @classmethod
    def from_slimrt_config(cls, cfg: dict[str, Any], device: Any = "meta") -> "LowRankLinear":
        """Rebuilds an empty module; its state_dict shapes follow the stored rank, so a checkpoint whose
        tensors disagree with the rank fails to load (with the layer named)."""
        for key in ("in_features", "out_features", "rank", "bias"):
            if key not in cfg:
                raise ValueError(f"LowRankLinear config lacks field {key!r}")
        fd = str(cfg.get("factor_dtype", "float32"))
        if fd not in FACTOR_DTYPES:
            raise ValueError(f"LowRankLinear config: factor_dtype {fd!r} is not one of {sorted(FACTOR_DTYPES)}")
        bd = str(cfg.get("bias_dtype", "float32"))
        if bd not in FACTOR_DTYPES:
            raise ValueError(f"LowRankLinear config: bias_dtype {bd!r} is not one of {sorted(FACTOR_DTYPES)}")
        ints = {}
        for key in ("in_features", "out_features", "rank"):
            val = cfg[key]
            if not isinstance(val, int) or isinstance(val, bool):
                raise ValueError(f"LowRankLinear config: {key}={val!r} is not an int")
            ints[key] = val
        if not isinstance(cfg["bias"], bool) or not isinstance(cfg.get("quantized", False), bool):
            raise ValueError("LowRankLinear config: bias and quantized must be booleans")
        return cls(ints["in_features"], ints["out_features"], ints["rank"], cfg["bias"], FACTOR_DTYPES[fd],
                   cfg.get("quantized", False), str(cfg.get("mode", "w8a8")), device=device,
                   bias_dtype=FACTOR_DTYPES[bd])

    def _check_incoming(self, module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # Shapes that disagree with the configured rank are a bad checkpoint: say so with the layer and
        # the rank, before torch's generic size-mismatch message.
        layer = prefix.rstrip(".") or "<root>"
        for name, t in self.state_dict(keep_vars=True).items():
            got = state_dict.get(prefix + name)
            if isinstance(got, Tensor) and tuple(got.shape) != tuple(t.shape):
                raise ValueError(f"{layer}: tensor {name!r} has shape {tuple(got.shape)} but the stored rank "
                                 f"{self.rank} with in_features={self.in_features}, out_features="
                                 f"{self.out_features} needs {tuple(t.shape)}")
        if self.quantized:
            for name in ("u_scale", "v_scale"):
                got = state_dict.get(prefix + name)
                if isinstance(got, Tensor) and got.device.type != "meta" and got.numel():
                    if not bool((torch.isfinite(got) & (got > 0)).all()):
                        raise ValueError(f"{layer}: {name} holds NaN, Inf, zero or negative scales")

    @staticmethod
    def _contiguous_state(module, state_dict, prefix, local_metadata) -> None:
        # Checkpoints hold plain row-major (N, R) and (R, K) tensors, whatever the in-memory layout.
        for name in ("u", "v"):
            key = prefix + name
            if key in state_dict and not state_dict[key].is_contiguous():
                state_dict[key] = state_dict[key].contiguous()

    def relayout(self) -> None:
        """Puts the factors into the kernel layout (float) or rebuilds the int8 packed copies."""
        ref = self.u_q if self.quantized else self.u
        if ref.device.type == "meta":
            return
        with torch.no_grad():
            if self.quantized:
                self.u_packed = ops.int8_pack_weight(self.u_q)
                self.v_packed = ops.int8_pack_weight(self.v_q)
            else:
                self.u = _kernel_layout(self.u)
                self.v = _kernel_layout(self.v)

    def _apply(self, fn, recurse=True):  # keeps the layout / packed copies in step across .to()
        out = super()._apply(fn, recurse)
        self.relayout()
        return out

    # ---- compute -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if _train.needs_grad(x, self):
            return self._forward_differentiable(x)
        if self.quantized:
            lin = ops.int8_linear if self.mode == "w8a8" else ops.int8_weight_only_linear
            h = lin(x, self.v_q, self.v_scale, None, self.v_packed)  # (..., R) in x.dtype
            return lin(h, self.u_q, self.u_scale, self.bias, self.u_packed)
        if x.dtype != self.factor_dtype:
            return ops.lowrank_linear(x.to(self.factor_dtype), self.u, self.v, self.bias).to(x.dtype)
        return ops.lowrank_linear(x, self.u, self.v, self.bias)

    def _forward_differentiable(self, x: Tensor) -> Tensor:
        """The kernels' function in plain PyTorch, differentiable in x and the TRAINABLE tensors."""
        bias = None if self.bias is None else self.bias.float()
        if self.quantized:
            fq = _train.fake_quant_per_token if self.mode == "w8a8" else (lambda t: t)
            h = nn.functional.linear(fq(x.float()), _train.dequant(self.v_q, self.v_scale))  # (..., R)
            return nn.functional.linear(fq(h), _train.dequant(self.u_q, self.u_scale), bias).to(x.dtype)
        xf = x.to(self.factor_dtype)
        y = nn.functional.linear(nn.functional.linear(xf, self.v), self.u)  # (..., R) -> (..., N)
        return (y.float() + bias if bias is not None else y).to(x.dtype)

    def weight(self) -> Tensor:
        """(N, K) float32 weight this module multiplies by (for quality checks; never stored)."""
        if self.quantized:
            return (self.u_q.float() * self.u_scale.unsqueeze(1)) @ (self.v_q.float() * self.v_scale.unsqueeze(1))
        return self.u.float() @ self.v.float()

    def num_params(self) -> int:
        """Stored numbers: R (N + K) (+ N + R scales when quantized) (+ N bias)."""
        n = self.rank * (self.in_features + self.out_features)
        if self.quantized:
            n += self.out_features + self.rank
        return n + (self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        kind = f"int8 {self.mode}" if self.quantized else _dtype_name(self.factor_dtype)
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}, factors={kind}")
