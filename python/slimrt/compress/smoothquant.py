"""SmoothQuant-style activation-outlier migration (Xiao et al., 2023), in its generic form.

Per-token int8 quantization of x loses precision when a few input channels carry much larger
values than the rest (after LayerNorm and GELU, transformers have such channels). Scaling input
channel j of x down by s_j and column j of W up by s_j leaves x @ W.T unchanged but moves the
range into the weight, which is quantized per output channel and tolerates it better:

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)        (X_j over calibration tokens, W_j = W[:, j])

Papers fold 1/s into the preceding LayerNorm; that needs per-architecture knowledge, so slimrt
stores the multiplier ``smooth = 1/s`` in the Int8Linear (one elementwise multiply per call) and
works on any model.
"""

from __future__ import annotations

import torch
from torch import Tensor

# s is kept within [1/S_LIMIT, S_LIMIT]: a channel that calibration saw near zero must not
# inflate the weight column (and its int8 scale) by orders of magnitude.
S_LIMIT = 1e4


def smoothing_factors(act_amax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """s (K,) float32 > 0 from act_amax (K,) and weight (N, K): the formula in the module doc.

    Channels where either max is zero get s = 1 (nothing to migrate, and no 0/0).
    """
    a = act_amax.float()
    w_amax = weight.detach().float().abs().amax(dim=0) if weight.shape[0] else torch.zeros_like(a)
    ok = (a > 0) & (w_amax > 0)
    s = a.clamp_min(1e-12).pow(alpha) / w_amax.clamp_min(1e-12).pow(1.0 - alpha)
    s = torch.where(ok, s, torch.ones_like(s)).clamp_(1.0 / S_LIMIT, S_LIMIT)
    return s
