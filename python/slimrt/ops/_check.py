"""Argument checks shared by the reference and every kernel registration.

Each failure is one sentence naming the op, the argument, what it got and what it expected.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FLOAT_ACT_DTYPES = (torch.float32, torch.bfloat16)


def dtype(op: str, name: str, t: torch.Tensor, allowed: Iterable[torch.dtype]) -> None:
    allowed = tuple(allowed)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{op}: {name} has dtype {str(t.dtype).replace('torch.', '')}, expected {names}")


def ndim(op: str, name: str, t: torch.Tensor, n: int) -> None:
    if t.dim() != n:
        raise ValueError(f"{op}: {name} must be {n}-D, got shape {tuple(t.shape)}")


def min_ndim(op: str, name: str, t: torch.Tensor, n: int) -> None:
    if t.dim() < n:
        raise ValueError(f"{op}: {name} must have at least {n} dims, got shape {tuple(t.shape)}")


def shape(op: str, name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(expected)}")


def same_device(op: str, **tensors: torch.Tensor | None) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")


def no_grad_needed(op: str, **tensors: torch.Tensor | None) -> None:
    """slimrt ops are inference kernels with no backward; refuse to silently drop gradients."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op}: {name} requires grad, but slimrt ops are inference-only and have no backward; "
                "call under torch.no_grad()/torch.inference_mode(), or train with slimrt.distill"
            )


def bias(op: str, b: torch.Tensor | None, n: int) -> None:
    if b is None:
        return
    dtype(op, "bias", b, (torch.float32, torch.bfloat16))
    shape(op, "bias", b, (n,))
