"""CUDA kernels: the Triton launchers of slimrt.kernels registered for the CUDA dispatch key.

This module imports neither triton nor slimrt.kernels: each op loads its kernel module on its first
call, so `import slimrt` stays lean even on a GPU machine. SLIMRT_BACKEND=triton registers the same
functions for the CPU key too, which runs them on CPU tensors through the Triton interpreter
(TRITON_INTERPRET=1), so one op test suite checks both backends. Arguments are checked here (the
same checks as the reference), so the launchers only see well-formed calls.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
from types import ModuleType
from typing import Iterator

import torch
from torch import Tensor

from slimrt.ops import _check, reference

_modules: dict[str, ModuleType] = {}


def triton_found() -> bool:
    """True when an installed triton package is importable (without importing it).

    A bare directory named `triton` on sys.path (an editable install puts the checkout's parent
    there) is an empty namespace package with no origin: it does not count.
    """
    spec = importlib.util.find_spec("triton")
    return spec is not None and spec.origin is not None


def triton_version() -> str | None:
    """The installed triton's version from its metadata (no import), or None."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def _kernels(name: str) -> ModuleType:
    """slimrt.kernels.<name>, imported on first use, with an actionable error when triton is missing."""
    mod = _modules.get(name)
    if mod is None:
        if not triton_found():
            raise ImportError(
                f"slimrt: the Triton kernel for {name} needs the triton package, which is not installed; "
                "run `pip install triton` (or `pip install slimrt[triton]`), or unset SLIMRT_BACKEND=triton"
            )
        mod = _modules[name] = importlib.import_module(f"slimrt.kernels.{name}")
    return mod


@contextlib.contextmanager
def _launch_on(op: str, mod: ModuleType, t: Tensor) -> Iterator[None]:
    """Launches on t's GPU; refuses CPU tensors unless the kernels were built for the interpreter."""
    if t.device.type == "cuda":
        with torch.cuda.device(t.device):
            yield
        return
    from slimrt.kernels import _common

    if not _common.INTERPRET:
        raise RuntimeError(
            f"{op}: SLIMRT_BACKEND=triton got a tensor on {t.device}; Triton runs CPU tensors only through its "
            "interpreter: set TRITON_INTERPRET=1 in the environment before starting Python (slow, meant for "
            "tests), or use SLIMRT_BACKEND=auto for the native CPU kernels"
        )
    yield


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    _check.dtype("quantize_per_token", "x", x, _check.FLOAT_ACT_DTYPES)
    _check.min_ndim("quantize_per_token", "x", x, 1)
    mod = _kernels("quantize_per_token")
    with _launch_on("quantize_per_token", mod, x):
        return mod.quantize_per_token(x)


def int8_gemm(a: Tensor, b: Tensor, a_scale: Tensor | None, b_scale: Tensor | None,
              out_dtype: torch.dtype) -> Tensor:
    reference._check_gemm(a, b, a_scale, b_scale, out_dtype)
    mod = _kernels("int8_gemm")
    with _launch_on("int8_gemm", mod, a):
        return mod.int8_gemm(a, b, a_scale, b_scale, out_dtype)


def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, w_packed: Tensor | None,
                activation: str = "none") -> Tensor:
    # w_packed is a CPU layout (int8_pack_weight returns an empty tensor on CUDA): w_q is read directly.
    reference._check_linear("int8_linear", x, w_q, w_scale, bias)
    reference.check_activation("int8_linear", activation)
    mod = _kernels("int8_gemm")
    with _launch_on("int8_linear", mod, x):
        return mod.int8_linear(x, w_q, w_scale, bias, activation=activation)


def int8_weight_only_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None,
                            w_packed: Tensor | None) -> Tensor:
    reference._check_linear("int8_weight_only_linear", x, w_q, w_scale, bias)
    mod = _kernels("int8_weight_only_linear")
    with _launch_on("int8_weight_only_linear", mod, x):
        return mod.int8_weight_only_linear(x, w_q, w_scale, bias)


def w4_linear(x: Tensor, w_q4: Tensor, w_scale: Tensor, w_zero: Tensor | None, bias: Tensor | None,
              w_packed: Tensor | None, group_size: int) -> Tensor:
    # w_packed is the CPU kernels' layout (empty here): the kernel reads the row-major codes.
    from slimrt.ops.reference_w4 import check_w4

    check_w4("w4_linear", x, w_q4, w_scale, w_zero, bias, group_size)
    mod = _kernels("w4_linear")
    with _launch_on("w4_linear", mod, x):
        return mod.w4_linear(x, w_q4, w_scale, w_zero, bias, group_size)


def lowrank_linear(x: Tensor, u: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    reference._check_lowrank(x, u, v, bias)
    mod = _kernels("lowrank_linear")
    with _launch_on("lowrank_linear", mod, x):
        return mod.lowrank_linear(x, u, v, bias)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, kv_num_blocks: Tensor, kv_indices: Tensor,
                           block_size: int, causal: bool, window: int, num_global: int, token_mask: Tensor | None,
                           scale: float | None) -> Tensor:
    # Layout contents (counts, index range, order): checked on the host for CPU tensors, as the native
    # kernel does. On CUDA that check would cost a device sync per call (per decode step); BlockMask
    # validates its layout when built, and the kernel clamps counts and skips out-of-range blocks, so a
    # raw bad layout cannot read out of bounds.
    reference._check_attention(q, k, v, kv_num_blocks, kv_indices, block_size, causal, window, num_global,
                               token_mask, scale, check_layout=q.device.type != "cuda")
    mod = _kernels("block_sparse_attention")
    with _launch_on("block_sparse_attention", mod, q):
        return mod.block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size, causal, window,
                                          num_global, token_mask, scale)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool,
                     scale: float | None) -> Tensor:
    """No Triton kernel yet: the packed tokens are scattered into a padded (B, Lmax) batch, run through
    torch's SDPA (flash / memory-efficient on a GPU) with a key-padding mask, and gathered back."""
    cu = reference._check_varlen(q, k, v, cu_seqlens, scale)
    t, hq, d = q.shape
    hkv = k.shape[1]
    lens = [b - a for a, b in zip(cu, cu[1:])]
    if t == 0 or hq == 0 or not lens:
        return q.new_zeros(q.shape)
    nb, lmax = len(lens), max(lens)
    dev = q.device
    lens_t = torch.tensor(lens, device=dev)
    row = torch.repeat_interleave(torch.arange(nb, device=dev), lens_t)  # (T,) sequence of each token
    col = torch.arange(t, device=dev) - torch.repeat_interleave(torch.tensor(cu[:-1], device=dev), lens_t)

    def padded(x: Tensor, h: int) -> Tensor:
        out = x.new_zeros((nb, lmax, h, d))
        out[row, col] = x
        return out.transpose(1, 2)  # (B, H, Lmax, D)

    keys = torch.arange(lmax, device=dev)
    mask = keys[None, :] < lens_t[:, None]  # (B, Lmax): real keys
    mask = mask[:, None, None, :] if not causal else \
        mask[:, None, None, :] & (keys[None, :] <= keys[:, None])[None, None]
    # A padding query of a causal row sees no key; let it see key 0 (its row is dropped anyway).
    mask = mask | (keys[None, None, :, None] >= lens_t[:, None, None, None]) & (keys == 0)[None, None, None, :]
    o = torch.nn.functional.scaled_dot_product_attention(padded(q, hq), padded(k, hkv), padded(v, hkv),
                                                         attn_mask=mask, scale=scale, enable_gqa=hq != hkv)
    return o.transpose(1, 2)[row, col]


# op name -> Triton implementation. quantize_per_channel, int8_pack_weight and w4_pack_weight have none: they run
# once per weight, offline, and the reference (any device) serves them.
KERNELS = {
    "quantize_per_token": quantize_per_token,
    "int8_gemm": int8_gemm,
    "int8_linear": int8_linear,
    "int8_weight_only_linear": int8_weight_only_linear,
    "lowrank_linear": lowrank_linear,
    "w4_linear": w4_linear,
    "block_sparse_attention": block_sparse_attention,
    "varlen_attention": varlen_attention,  # torch SDPA over a padded batch (no Triton kernel yet)
}


def register(lib: torch.library.Library, dispatch_keys: tuple[str, ...] = ("CUDA",)) -> None:
    """Registers the Triton kernels for the given dispatch keys (CUDA; CPU too for SLIMRT_BACKEND=triton)."""
    for key in dispatch_keys:
        for name, fn in KERNELS.items():
            lib.impl(name, fn, key)
