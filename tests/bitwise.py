"""Bit-for-bit comparison of kernel outputs, shared by the op tests (NaN equals NaN)."""

from __future__ import annotations

import torch


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape}/{got.dtype} vs {want.shape}/{want.dtype}"
    same = (got == want) | (got.float().isnan() & want.float().isnan())
    if not bool(same.all()):
        idx = (~same).nonzero()[:5].tolist()
        worst = [(i, got[tuple(i)].item(), want[tuple(i)].item()) for i in idx]
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.numel()} differ; first (index, got, want): {worst}")
