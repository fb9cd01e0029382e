"""Int8Linear: a drop-in for nn.Linear with int8 per-channel weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimrt import ops
from slimrt.nn import _train

MODES = ("w8a8", "w8")
_BIAS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


class Int8Linear(nn.Module):
    """y = x @ W.T + b with W stored as int8 (N, K) and an fp32 scale per output channel.

    mode "w8a8": activations quantized per token on the fly and multiplied in int8 (wins when M is
    large: prefill, batched embedding). mode "w8": activations stay float and the weight is
    dequantized on the fly (wins at small M, where reading fewer weight bytes is the whole gain).
    ``forward(x, mode=None)`` lets a runner choose per call shape; the default is the module's mode.

    State: w_q (N, K) int8, w_scale (N,) float32, bias (N,) float or None. A packed copy of w_q for
    the device's kernel is made once (non-persistent: never written to a checkpoint); on CPU it is the
    ISA-independent VNNI layout of csrc/int8_gemm/int8_gemm.h (16-column panels x 4-deep k groups +
    column sums), so one packed module serves every SLIMRT_ISA path.

    Optional ``smooth`` (K,) float32 (SmoothQuant-style migration, made by slimrt.compress): x is
    multiplied by it before quantization and W was divided by it before quantizing, so
    y = (x * smooth) @ (W / smooth).T: activation outlier channels shrink, the weight absorbs them.
    It costs one elementwise multiply of x per call; ``slimrt_config()["smooth"]`` says it exists.

    Training (slimrt.distill): when autograd is on and x or a ``TRAINABLE`` tensor requires grad,
    forward runs the same function in plain PyTorch (see nn/_train.py): w_q stays fixed, w_scale,
    bias and smooth train, and the w8a8 activation rounding passes gradients straight through.
    """

    TRAINABLE = ("w_scale", "bias", "smooth")
    # Float tensors the outputs are multiplied by: a checkpoint holding a zero, negative, NaN or Inf
    # value in one of them is refused at load (checkpoint/loader.py).
    POSITIVE_TENSORS = ("w_scale", "smooth")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "w8a8",
                 device: Any = None, bias_dtype: torch.dtype = torch.float32, smooth: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Int8Linear: mode={mode!r} is not one of {MODES}")
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Int8Linear: negative size in_features={in_features}, out_features={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.mode = mode
        self.register_buffer("w_q", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None
        if smooth:
            self.register_buffer("smooth", torch.ones(in_features, dtype=torch.float32, device=device))
        else:
            self.smooth = None
        self.register_buffer("w_packed", torch.empty(0, dtype=torch.int8, device=device), persistent=False)
        self._packed_from = _weight_key(self.w_q)  # the empty "pack" above is current for this w_q
        self._pack_pending = False
        # Loading packs lazily: the first call packs (see invalidate_pack), so weights that only ever
        # run fused (the native decode step's q/k/v and gate/up) are never packed on their own.
        self.register_load_state_dict_post_hook(lambda module, keys: module.invalidate_pack())

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str = "w8a8") -> "Int8Linear":
        """Quantizes an nn.Linear's weight per output channel (symmetric int8)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear expects nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, device=w.device)
        with torch.no_grad():
            w_q, w_scale = ops.quantize_per_channel(w)
            mod.w_q.copy_(w_q)
            mod.w_scale.copy_(w_scale)
            if linear.bias is not None:
                mod.bias.copy_(linear.bias.detach().float())
        mod.repack()
        return mod

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None, mode: str = "w8a8",
                    smooth: Tensor | None = None) -> "Int8Linear":
        """Quantizes a float weight (N, K) in nn.Linear layout; ``smooth`` (K,) > 0 is the per-input-
        channel multiplier of x (the weight is divided by it before quantizing, see the class doc)."""
        w = weight.detach().float()
        if w.dim() != 2:
            raise ValueError(f"Int8Linear.from_weight: weight must be 2-D (N, K), got shape {tuple(w.shape)}")
        n, k = w.shape
        mod = cls(k, n, bias is not None, mode, device=w.device, smooth=smooth is not None)
        with torch.no_grad():
            if smooth is not None:
                smooth = smooth.detach().float().to(w.device)
                if smooth.shape != (k,) or not bool(torch.isfinite(smooth).all()) or not bool((smooth > 0).all()):
                    raise ValueError(f"Int8Linear.from_weight: smooth must be ({k},), finite and > 0")
                mod.smooth.copy_(smooth)
                w = w / smooth.unsqueeze(0)
            w_q, w_scale = ops.quantize_per_channel(w)
            mod.w_q.copy_(w_q)
            mod.w_scale.copy_(w_scale)
            if bias is not None:
                mod.bias.copy_(bias.detach().float())
        mod.repack()
        return mod

    # Checkpoint protocol shared by every slimrt module: a JSON-able config that rebuilds an empty
    # module of the same shapes (on the meta device when loading), whose state_dict then names
    # the exact tensors, shapes and dtypes a checkpoint must hold for it.
    def slimrt_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "mode": self.mode,
                "bias_dtype": str(self.bias.dtype).replace("torch.", "") if self.bias is not None else "float32",
                "smooth": self.smooth is not None}

    @classmethod
    def from_slimrt_config(cls, cfg: dict[str, Any], device: Any = "meta") -> "Int8Linear":
        """Rebuilds an empty module from ``slimrt_config()``; a field of the wrong type is a ValueError
        naming it (a checkpoint's ``"bias": 2**63`` must not mean True)."""
        for key in ("in_features", "out_features"):
            if isinstance(cfg.get(key), bool) or not isinstance(cfg.get(key), int):
                raise ValueError(f"Int8Linear config: {key}={cfg.get(key)!r} is not an int")
        for key, default in (("bias", None), ("smooth", False)):
            if not isinstance(cfg.get(key, default), bool):
                raise ValueError(f"Int8Linear config: {key}={cfg.get(key)!r} is not true or false")
        if not isinstance(cfg.get("mode"), str):
            raise ValueError(f"Int8Linear config: mode={cfg.get('mode')!r} is not a string")
        bias_dtype = cfg.get("bias_dtype", "float32")
        if bias_dtype not in _BIAS_DTYPES:
            raise ValueError(f"Int8Linear config: bias_dtype={bias_dtype!r} is not one of {sorted(_BIAS_DTYPES)}")
        return cls(cfg["in_features"], cfg["out_features"], cfg["bias"], cfg["mode"], device=device,
                   bias_dtype=_BIAS_DTYPES[bias_dtype], smooth=cfg.get("smooth", False))

    def repack(self) -> None:
        """Rebuilds the kernel's packed weight from w_q. Called after loading or moving the module, and
        by ``forward`` when w_q is not what the pack was made from: another tensor (a new data
        pointer) or the same one changed in place (torch bumps ``_version`` on every in-place write).
        The vector kernels read only the pack and the scalar one only w_q, so a stale pack made the
        ISA paths disagree. Inference tensors have no version counter: for them only the kernels'
        sampled check of the pack against w_q remains (csrc/int8_gemm/int8_gemm.cpp)."""
        w_q = self.w_q
        if w_q.device.type != "meta":
            with torch.no_grad():
                self.w_packed = ops.int8_pack_weight(w_q)
        self._packed_from = _weight_key(w_q)
        self._pack_pending = False

    def invalidate_pack(self) -> None:
        """Drops the packed weight; the next forward (or ``current_pack``) packs w_q again. What
        loading and ``.to()`` do: packing costs ~17 ms per SmolLM2 weight, and the native decode step
        runs q/k/v and gate/up from one fused pack of its own, so their single packs are never needed."""
        self.w_packed = torch.empty(0, dtype=torch.int8, device=self.w_q.device)
        self._pack_pending = True

    def current_pack(self) -> Tensor:
        """w_packed, rebuilt first if it is missing or w_q changed since it was made (see repack): for
        callers that hand the pack to a kernel themselves (the native decode step)."""
        w_q, key = self.w_q, self._packed_from
        if self._pack_pending or (self.w_packed.numel() == 0 and w_q.device.type != "meta") or \
                (key is not None and (w_q._version != key[0] or w_q.data_ptr() != key[1])):
            self.repack()
        return self.w_packed

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) casts every float buffer; the kernels take fp32 scales (and the
        # smoothing vector), so those stay fp32 while the bias follows the model's dtype. The packed
        # copy follows w_q across .to()/.cuda().
        out = super()._apply(fn, recurse)
        for name in ("w_scale", "smooth"):
            t = self._buffers.get(name)
            if t is not None and t.dtype != torch.float32:
                self._buffers[name] = t.float()
        self.invalidate_pack()
        return out

    def forward(self, x: Tensor, mode: str | None = None, activation: str = "none") -> Tensor:
        """y = x W^T + b like nn.Linear; ``mode`` overrides the module's kernel for this call, and
        ``activation`` (a name of ops.reference.ACTIVATIONS) is applied to y: fused into the W8A8
        kernel's epilogue, after the weight-only kernel."""
        mode = mode or self.mode
        if torch.is_grad_enabled() and _train.needs_grad(x, self):  # training (slimrt.distill) only
            y = self._forward_differentiable(x, mode)
            return y if activation == "none" else _activation(activation)(y)
        buf = self._buffers  # one dict instead of four nn.Module.__getattr__ walks: this is the decode path
        w_q, key = buf["w_q"], self._packed_from  # is the pack stale? (see repack)
        if self._pack_pending or (key is not None and (w_q._version != key[0] or w_q.data_ptr() != key[1])):
            self.repack()
            buf = self._buffers
        smooth = buf.get("smooth")
        if smooth is not None:
            x = x * smooth.to(x.dtype)
        if mode == "w8a8":
            if activation == "none":
                return ops.int8_linear(x, buf["w_q"], buf["w_scale"], buf.get("bias"), buf["w_packed"])
            return ops.int8_linear(x, buf["w_q"], buf["w_scale"], buf.get("bias"), buf["w_packed"], activation)
        if mode == "w8":
            y = ops.int8_weight_only_linear(x, buf["w_q"], buf["w_scale"], buf.get("bias"), buf["w_packed"])
            return y if activation == "none" else _activation(activation)(y)
        raise ValueError(f"Int8Linear: mode={mode!r} is not one of {MODES}")

    def _forward_differentiable(self, x: Tensor, mode: str) -> Tensor:
        """The kernels' function in plain fp32 PyTorch, differentiable in x and the TRAINABLE tensors."""
        if mode not in MODES:
            raise ValueError(f"Int8Linear: mode={mode!r} is not one of {MODES}")
        xf = x.float()
        if self.smooth is not None:
            xf = xf * self.smooth
        if mode == "w8a8":
            xf = _train.fake_quant_per_token(xf)
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.linear(xf, _train.dequant(self.w_q, self.w_scale), bias).to(x.dtype)

    def dequantized_weight(self) -> Tensor:
        """(N, K) float32 weight this module multiplies by (x's own space: the smoothing folded back)."""
        w = self.w_q.float() * self.w_scale.unsqueeze(1)
        return w if self.smooth is None else w * self.smooth.unsqueeze(0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, mode={self.mode}" + (", smooth=True" if self.smooth is not None else "")


def _weight_key(w_q: Tensor) -> tuple[int, int] | None:
    """(in-place version, data pointer) of w_q: what ties a pack to the weight it was made from; None
    for an inference tensor, which has no version counter (and cannot change outside inference mode)."""
    if w_q.is_inference():
        return None
    return w_q._version, w_q.data_ptr()


def _activation(name: str):
    """The activation function named ``name`` (ops.reference.ACTIVATIONS), or a ValueError."""
    from slimrt.ops import reference

    reference.check_activation("Int8Linear", name)
    return reference.ACTIVATIONS[name]
