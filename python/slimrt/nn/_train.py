"""The differentiable path shared by slimrt modules (used by slimrt.distill).

slimrt ops are inference kernels without a backward. When autograd is on and the input or one of
a module's trainable tensors requires grad, a module computes the same function in plain PyTorch
instead: int8 weights dequantized (w_q * w_scale), and the per-token activation rounding of w8a8
replaced by fake quantization whose gradient is passed straight through (STE). The integer
weights never change; what trains are the module's float parts (its ``TRAINABLE`` tensors:
scales, biases, smoothing factors, float low-rank factors), which stay buffers, so the checkpoint
layout is the same before and after training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INT8_MAX = 127


def needs_grad(x: Tensor, module: nn.Module) -> bool:
    """True when this call must be differentiable (autograd on, and x or a trainable tensor needs grad)."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    return any(t is not None and t.requires_grad for t in trainable_tensors(module).values())


def trainable_tensors(module: nn.Module) -> dict[str, Tensor]:
    """{name: tensor} of the float state the module lets distillation train (see ``TRAINABLE``)."""
    out = {}
    for name in getattr(module, "TRAINABLE", ()):
        t = getattr(module, name, None)
        if isinstance(t, Tensor) and t.is_floating_point():
            out[name] = t
    return out


def fake_quant_per_token(x: Tensor) -> Tensor:
    """x (..., K) float32 -> round(x / s) * s with s = max|x| / 127 per row (the w8a8 activation
    rounding, as in ops.reference.quantize_per_token); the gradient passes straight through."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(x.detach() / scale).clamp_(-INT8_MAX, INT8_MAX) * scale
    return x + (q - x.detach())


def dequant(w_q: Tensor, w_scale: Tensor) -> Tensor:
    """(N, K) float32 weight from int8 w_q (N, K) and per-row scales (N,); differentiable in w_scale."""
    return w_q.float() * w_scale.unsqueeze(1)
