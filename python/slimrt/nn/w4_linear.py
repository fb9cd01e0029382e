"""W4Linear: a drop-in for nn.Linear with int4 weights in groups along K (the ``w4`` family)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimrt import ops
from slimrt.ops import reference_w4


class W4Linear(nn.Module):
    """y = x @ W.T + b with W stored as 4-bit codes, a float16 scale per (row, group of G along K) and
    optionally a uint8 zero point per group (else 8: symmetric). Layout: ops/reference_w4.py.

    State: w_q4 (N, ng * G / 2) uint8 (two codes per byte), w_scale (N, ng) float16, w_zero (N, ng)
    uint8 when ``zero_point``, bias (N,) or None. ``method`` records how the codes were chosen ("rtn":
    round to nearest, "gptq": calibrated), for reports and ``slimrt info``; it does not change the math.
    A packed copy for the device's kernel (non-persistent) is made once, as Int8Linear does.
    Inference only: the codes are not trainable.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 32,
                 zero_point: bool = True, method: str = "rtn", device: Any = None,
                 bias_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        reference_w4.check_group_size("W4Linear", group_size)
        if in_features < 0 or out_features < 0:
            raise ValueError(f"W4Linear: negative size in_features={in_features}, out_features={out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.zero_point, self.method = group_size, bool(zero_point), str(method)
        ng = reference_w4.num_groups(in_features, group_size)
        self.register_buffer("w_q4", torch.zeros(out_features, ng * group_size // 2, dtype=torch.uint8, device=device))
        self.register_buffer("w_scale", torch.ones(out_features, ng, dtype=torch.float16, device=device))
        if zero_point:
            self.register_buffer("w_zero", torch.full((out_features, ng), 8, dtype=torch.uint8, device=device))
        else:
            self.w_zero = None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None
        self.register_buffer("w_packed", torch.empty(0, dtype=torch.uint8, device=device), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module.repack())

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None, group_size: int = 32, zero_point: bool = True,
                    codes: tuple[Tensor, Tensor, Tensor | None] | None = None, method: str = "rtn") -> "W4Linear":
        """Round-to-nearest int4 of a float weight (N, K), or the given ``codes`` = (w_q4, w_scale, w_zero)
        from a calibrated method (reference_w4's layout)."""
        w = weight.detach()
        if w.dim() != 2:
            raise ValueError(f"W4Linear.from_weight: weight must be 2-D (N, K), got shape {tuple(w.shape)}")
        n, k = w.shape
        mod = cls(k, n, bias is not None, group_size, zero_point, method, device=w.device)
        q4, scale, zero = codes if codes is not None else reference_w4.quantize(w, group_size, zero_point)
        with torch.no_grad():
            mod.w_q4.copy_(q4)
            mod.w_scale.copy_(scale)
            if zero_point:
                mod.w_zero.copy_(zero)
            if bias is not None:
                mod.bias.copy_(bias.detach().float())
        mod.repack()
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32, zero_point: bool = True) -> "W4Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"W4Linear.from_linear expects nn.Linear, got {type(linear).__name__}")
        return cls.from_weight(linear.weight, linear.bias, group_size, zero_point)

    # Checkpoint protocol (see Int8Linear).
    def slimrt_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "group_size": self.group_size, "zero_point": self.zero_point, "method": self.method,
                "bias_dtype": str(self.bias.dtype).replace("torch.", "") if self.bias is not None else "float32"}

    @classmethod
    def from_slimrt_config(cls, cfg: dict[str, Any], device: Any = "meta") -> "W4Linear":
        return cls(int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg["bias"]), int(cfg["group_size"]),
                   bool(cfg["zero_point"]), str(cfg.get("method", "rtn")), device=device,
                   bias_dtype=getattr(torch, str(cfg.get("bias_dtype", "float32"))))

    def slimrt_validate(self) -> None:
        """The loader's content checks (shapes and dtypes are checked against the config before):
        zero points in [0, 15] and the codes of the padding past K zero. (Scales: positive and finite,
        checked by the loader for every scale tensor.)"""
        if self.w_zero is not None and bool((self.w_zero > 15).any()):
            bad = (self.w_zero > 15).nonzero()[0].tolist()
            raise ValueError(f"w_zero holds values above 15 (first at {bad}: {int(self.w_zero[bad[0], bad[1]])})")
        k, kp = self.in_features, self.w_q4.shape[1] * 2
        if kp > k and self.out_features:
            pad = reference_w4.unpack_codes(self.w_q4, kp)[:, k:]
            if bool(pad.any()):
                raise ValueError(f"w_q4 has nonzero codes past in_features={k} (the padding of the last group "
                                 "must be 0)")

    def repack(self) -> None:
        """Rebuilds the kernel's packed weight (after loading or moving the module)."""
        if self.w_q4.device.type == "meta":
            return
        with torch.no_grad():
            self.w_packed = ops.w4_pack_weight(self.w_q4, self.w_scale, self.w_zero, self.group_size,
                                               self.in_features)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) casts float buffers: the scales stay float16 (the kernels read fp16 bits).
        before = self._buffers.get("w_scale")
        out = super()._apply(fn, recurse)
        t = self._buffers.get("w_scale")
        if t is not None and t.dtype != torch.float16:
            self._buffers["w_scale"] = before.to(t.device)
        self.repack()
        return out

    def forward(self, x: Tensor) -> Tensor:
        buf = self._buffers
        return ops.w4_linear(x, buf["w_q4"], buf["w_scale"], buf.get("w_zero"), buf.get("bias"), buf["w_packed"],
                             self.group_size)

    def dequantized_weight(self) -> Tensor:
        """(N, K) float32 weight the codes stand for."""
        return reference_w4.dequantize(self.w_q4, self.w_scale, self.w_zero, self.group_size, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, zero_point={self.zero_point}, method={self.method}")
