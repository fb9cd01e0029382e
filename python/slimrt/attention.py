"""Block-sparse attention masks: ``BlockMask`` and its constructors.

A ``BlockMask`` says which token pairs (query i, key j) attention may use, in two levels:

1. Blocks. Queries and keys are cut into blocks of ``block_size`` rows (the last one may be short);
   per query block the mask lists the key blocks that are computed, as in BSR or FlexAttention:
   ``kv_num_blocks`` int32 (B', H', nQB) counts them and ``kv_indices`` int32 (B', H', nQB, maxKB)
   holds their indices, sorted ascending, in the first ``count`` slots (the rest is padding and
   ignored). B' is 1 (shared) or the batch size, H' is 1 (shared) or the number of query heads.
2. A token rule applied inside the listed blocks. With query i at position p = Lk - Lq + i (queries
   aligned to the end of the keys, as in decoding with a cache) and key j:

       allowed(p, j) = (not causal or j <= p)
                       and (window == 0 or |p - j| < window or j < num_global or p < num_global)

   so ``window`` keeps a band around the diagonal (with ``causal``, the ``window`` most recent keys,
   itself included) and the first ``num_global`` positions are global "sink" tokens that attend to
   every key and are attended by every query (StreamingLLM, Longformer); ``causal`` always wins.
   Optionally a ``token_mask`` bool (B'|1, H'|1, Lq, Lk) is also ANDed in: ``from_token_mask``
   stores one whenever the blocks alone would allow more than the given token mask, so any token
   mask is honoured exactly. A mask with a ``token_mask`` only fits that one (Lq, Lk).

The contract of ``slimrt.ops.block_sparse_attention(q, k, v, mask)`` is softmax attention over
exactly the pairs ``mask.to_dense(Lq, Lk)`` allows; a query with no allowed key gives zeros.

The end of the file holds the attention pattern a model config carries (``slimrt_attention``,
written by the recipe method "sparse_attention"): ``read_pattern`` and ``validate_pattern`` live
here, at the bottom of the package, because the compressor writes the pattern, the checkpoint
validates it and the runner, evaluate and distill read it.
This module imports only torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["BlockMask", "causal_mask", "sliding_window_mask", "full_mask", "token_rule", "read_pattern",
           "validate_pattern"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_block_size(where: str, block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{where}: block_size must be an int >= 1, got {block_size!r}")


def _check_lengths(where: str, lq: int, lk: int) -> None:
    for name, v in (("Lq", lq), ("Lk", lk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{where}: {name} must be an int >= 0, got {v!r}")


def token_rule(lq: int, lk: int, causal: bool, window: int, num_global: int,
               device: torch.device | str = "cpu") -> Tensor:
    """The token rule alone as a dense bool (Lq, Lk) tensor (see the module docstring)."""
    p = torch.arange(lq, device=device).unsqueeze(1) + (lk - lq)  # (Lq, 1) query positions
    j = torch.arange(lk, device=device).unsqueeze(0)  # (1, Lk) key positions
    ok = torch.ones((lq, lk), dtype=torch.bool, device=device)
    if window > 0:
        ok = ((p - j).abs() < window) | (j < num_global) | (p < num_global)
    if causal:
        ok = ok & (j <= p)
    return ok


def validate_layout(kv_num_blocks: Tensor, kv_indices: Tensor, num_kv_blocks: int | None = None,
                    where: str = "BlockMask") -> None:
    """Checks the compact block layout; raises ValueError/TypeError naming the field.

    Counts must lie in [0, maxKB]; the listed indices of each query block must be strictly
    increasing (sorted, no duplicates), >= 0, and < num_kv_blocks when that is known.
    """
    for name, t, nd in (("kv_num_blocks", kv_num_blocks, 3), ("kv_indices", kv_indices, 4)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int32:
            raise TypeError(f"{where}: {name} has dtype {str(t.dtype).replace('torch.', '')}, expected int32")
        if t.dim() != nd:
            raise ValueError(f"{where}: {name} must be {nd}-D, got shape {tuple(t.shape)}")
    if tuple(kv_indices.shape[:3]) != tuple(kv_num_blocks.shape):
        raise ValueError(f"{where}: kv_indices has shape {tuple(kv_indices.shape)} but kv_num_blocks has shape "
                         f"{tuple(kv_num_blocks.shape)}; expected kv_indices (B', H', nQB, maxKB) over the same (B', H', nQB)")
    max_kb = kv_indices.shape[3]
    if kv_num_blocks.numel() == 0:
        return
    counts = kv_num_blocks.to(torch.int64)
    bad = (counts < 0) | (counts > max_kb)
    if bool(bad.any()):
        at = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{where}: kv_num_blocks{list(at)} = {int(counts[at])} is outside [0, maxKB={max_kb}]")
    if max_kb == 0:
        return
    idx = kv_indices.to(torch.int64)
    valid = torch.arange(max_kb, device=idx.device) < counts.unsqueeze(-1)  # (B', H', nQB, maxKB)
    low = valid & (idx < 0)
    if num_kv_blocks is not None:
        low = low | (valid & (idx >= num_kv_blocks))
    if bool(low.any()):
        at = tuple(low.nonzero()[0].tolist())
        hi = "" if num_kv_blocks is None else f", {num_kv_blocks})"
        rng = f"[0{hi}" if hi else ">= 0"
        raise ValueError(f"{where}: kv_indices{list(at)} = {int(idx[at])} is out of range (expected {rng})")
    if max_kb > 1:
        pair_valid = valid[..., 1:]  # the later element of each adjacent pair is listed
        unsorted = pair_valid & (idx[..., 1:] <= idx[..., :-1])
        if bool(unsorted.any()):
            at = tuple(unsorted.nonzero()[0].tolist())
            prev, cur = int(idx[at[:3] + (at[3],)]), int(idx[at[:3] + (at[3] + 1,)])
            what = "duplicated" if prev == cur else "not sorted ascending"
            raise ValueError(f"{where}: kv_indices{list(at[:3])} is {what} ({prev} then {cur}); the listed key "
                             "blocks of a query block must be strictly increasing")


def dense_from_fields(kv_num_blocks: Tensor, kv_indices: Tensor, block_size: int, causal: bool, window: int,
                      num_global: int, token_mask: Tensor | None, lq: int, lk: int) -> Tensor:
    """The allowed token pairs of a mask given by its fields -> bool (B', H', Lq, Lk)."""
    bm, hm, nqb, max_kb = kv_indices.shape
    nkb = _cdiv(lk, block_size)
    dev = kv_indices.device
    valid = torch.arange(max_kb, device=dev) < kv_num_blocks.to(torch.int64).unsqueeze(-1)
    # Unlisted slots scatter into a spare column nKB that is dropped afterwards.
    cols = torch.where(valid, kv_indices.to(torch.int64), torch.full_like(kv_indices, nkb, dtype=torch.int64))
    blocks = torch.zeros((bm, hm, nqb, nkb + 1), dtype=torch.bool, device=dev)
    blocks.scatter_(3, cols, True)
    blocks = blocks[..., :nkb]  # (B', H', nQB, nKB)
    dense = blocks.repeat_interleave(block_size, dim=2)[:, :, :lq]
    dense = dense.repeat_interleave(block_size, dim=3)[..., :lk]  # (B', H', Lq, Lk)
    dense = dense & token_rule(lq, lk, causal, window, num_global, dev)
    if token_mask is not None:
        dense = dense & token_mask.to(dev)
    return dense


def _rule_blocks(lq: int, lk: int, block_size: int, causal: bool, window: int, num_global: int) -> Tensor:
    """bool (nQB, nKB): True where the block holds at least one pair the token rule allows."""
    nqb, nkb = _cdiv(lq, block_size), _cdiv(lk, block_size)
    off = lk - lq
    qb = torch.arange(nqb).unsqueeze(1)
    kb = torch.arange(nkb).unsqueeze(0)
    p0 = qb * block_size + off  # first and last query position of each query block
    p1 = torch.clamp((qb + 1) * block_size, max=lq) - 1 + off
    j0 = kb * block_size  # first and last key of each key block
    j1 = torch.clamp((kb + 1) * block_size, max=lk) - 1
    # Differences p - j over the block span [p0 - j1, p1 - j0].
    lo, hi = p0 - j1, p1 - j0
    causal_ok = hi >= 0 if causal else torch.ones_like(lo, dtype=torch.bool)
    if window == 0:
        return causal_ok.expand(nqb, nkb).clone()
    if causal:  # some difference in [0, window - 1]
        band = (lo <= window - 1) & (hi >= 0)
        # Global keys j < g seen by some p >= j; global queries p < g see some j <= p.
        glob_k = (j0 < num_global) & (p1 >= j0)
        glob_q = (p0 < num_global) & (j0 <= torch.clamp(p1, max=num_global - 1))
    else:  # some difference in [-(window - 1), window - 1]
        band = (lo <= window - 1) & (hi >= -(window - 1))
        glob_k = (j0 < num_global).expand(nqb, nkb)
        glob_q = (p0 < num_global).expand(nqb, nkb)
    return causal_ok & (band | glob_k | glob_q)


class BlockMask:
    """Which (query block, key block) pairs attention computes, plus a token rule (see module doc).

    Immutable after construction and validated on it: wrong dtypes are TypeError, wrong shapes,
    out-of-range / unsorted / duplicated indices and bad rule values are ValueError naming the field.
    ``seq_lengths`` (Lq, Lk), when known, is checked against q and k at call time.
    """

    __slots__ = ("kv_num_blocks", "kv_indices", "block_size", "causal", "window", "num_global",
                 "token_mask", "seq_lengths", "_frozen")

    def __init__(self, kv_num_blocks: Tensor, kv_indices: Tensor, block_size: int, *, causal: bool = False,
                 window: int = 0, num_global: int = 0, token_mask: Tensor | None = None,
                 seq_lengths: tuple[int, int] | None = None) -> None:
        for name, val in (("block_size", block_size), ("window", window), ("num_global", num_global)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise TypeError(f"BlockMask: {name} must be an int, got {type(val).__name__}")
        if block_size < 1:
            raise ValueError(f"BlockMask: block_size must be >= 1, got {block_size}")
        if window < 0:
            raise ValueError(f"BlockMask: window must be >= 0 (0 = no window), got {window}")
        if num_global < 0:
            raise ValueError(f"BlockMask: num_global must be >= 0, got {num_global}")
        if not isinstance(causal, bool):
            raise TypeError(f"BlockMask: causal must be a bool, got {type(causal).__name__}")
        if token_mask is not None:
            if not isinstance(token_mask, Tensor) or token_mask.dtype != torch.bool or token_mask.dim() != 4:
                raise ValueError("BlockMask: token_mask must be a 4-D bool tensor (B'|1, H'|1, Lq, Lk)")
            tl = (token_mask.shape[2], token_mask.shape[3])
            if seq_lengths is not None and tuple(seq_lengths) != tl:
                raise ValueError(f"BlockMask: token_mask covers (Lq, Lk) = {tl} but seq_lengths is {tuple(seq_lengths)}")
            seq_lengths = tl
        num_kv_blocks = None
        if seq_lengths is not None:
            lq, lk = (int(x) for x in seq_lengths)
            if lq < 0 or lk < 0:
                raise ValueError(f"BlockMask: seq_lengths must be non-negative, got {(lq, lk)}")
            seq_lengths = (lq, lk)
            num_kv_blocks = _cdiv(lk, block_size)
        validate_layout(kv_num_blocks, kv_indices, num_kv_blocks)
        if seq_lengths is not None and kv_num_blocks.shape[2] != _cdiv(seq_lengths[0], block_size):
            raise ValueError(f"BlockMask: kv_num_blocks has {kv_num_blocks.shape[2]} query blocks but Lq = "
                             f"{seq_lengths[0]} with block_size {block_size} needs {_cdiv(seq_lengths[0], block_size)}")
        if token_mask is not None:
            for d, name in ((0, "batch"), (1, "head")):
                if token_mask.shape[d] not in (1, kv_num_blocks.shape[d]):
                    raise ValueError(f"BlockMask: token_mask has {token_mask.shape[d]} entries in the {name} dim, "
                                     f"expected 1 or {kv_num_blocks.shape[d]}")
        sets = {"kv_num_blocks": kv_num_blocks, "kv_indices": kv_indices, "block_size": block_size,
                "causal": causal, "window": window, "num_global": num_global, "token_mask": token_mask,
                "seq_lengths": seq_lengths}
        for k, v in sets.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BlockMask is immutable; build a new one instead of setting {name}")

    def __repr__(self) -> str:
        bm, hm, nqb, max_kb = self.kv_indices.shape
        listed = int(self.kv_num_blocks.sum())
        return (f"BlockMask(shape=(B'={bm}, H'={hm}, nQB={nqb}, maxKB={max_kb}), block_size={self.block_size}, "
                f"listed_blocks={listed}, causal={self.causal}, window={self.window}, "
                f"num_global={self.num_global}, token_mask={self.token_mask is not None}, "
                f"seq_lengths={self.seq_lengths})")

    def check_lengths(self, lq: int, lk: int, where: str = "BlockMask", layout: bool = True) -> None:
        """Raises ValueError unless this mask fits queries of length lq and keys of length lk (with
        layout=False the key-block indices are left to the op, which checks them itself)."""
        nqb = _cdiv(lq, self.block_size)
        if self.seq_lengths is not None and self.seq_lengths != (lq, lk):
            raise ValueError(f"{where}: mask was built for (Lq, Lk) = {self.seq_lengths} but got ({lq}, {lk})")
        if self.kv_num_blocks.shape[2] != nqb:
            raise ValueError(f"{where}: mask has {self.kv_num_blocks.shape[2]} query blocks but Lq = {lq} with "
                             f"block_size {self.block_size} needs {nqb}")
        if layout:
            validate_layout(self.kv_num_blocks, self.kv_indices, _cdiv(lk, self.block_size), where)

    def to_dense(self, lq: int, lk: int) -> Tensor:
        """Exactly the allowed token pairs -> bool (B', H', Lq, Lk)."""
        self.check_lengths(lq, lk, "BlockMask.to_dense")
        return dense_from_fields(self.kv_num_blocks, self.kv_indices, self.block_size, self.causal, self.window,
                                 self.num_global, self.token_mask, lq, lk)

    def density(self) -> float:
        """Fraction of (query block, key block) pairs listed, over all heads and batches."""
        if self.kv_num_blocks.numel() == 0:
            return 0.0
        nkb = self.kv_indices.shape[3] if self.seq_lengths is None else _cdiv(self.seq_lengths[1], self.block_size)
        return float(self.kv_num_blocks.sum()) / max(1, self.kv_num_blocks.numel() * nkb)

    @classmethod
    def from_dense(cls, block_mask: Tensor, block_size: int, *, causal: bool = False, window: int = 0,
                   num_global: int = 0, seq_lengths: tuple[int, int] | None = None) -> BlockMask:
        """From a bool block map (nQB, nKB) or (B', H', nQB, nKB) plus an optional token rule."""
        if not isinstance(block_mask, Tensor) or block_mask.dtype != torch.bool or block_mask.dim() not in (2, 4):
            raise ValueError("BlockMask.from_dense: block_mask must be a bool tensor (nQB, nKB) or (B', H', nQB, nKB)")
        _check_block_size("BlockMask.from_dense", block_size)
        if block_mask.dim() == 2:
            block_mask = block_mask[None, None]
        nkb = block_mask.shape[3]
        if seq_lengths is not None and nkb != _cdiv(int(seq_lengths[1]), block_size):
            raise ValueError(f"BlockMask.from_dense: block_mask has {nkb} key blocks but Lk = {seq_lengths[1]} with "
                             f"block_size {block_size} needs {_cdiv(int(seq_lengths[1]), block_size)}")
        counts = block_mask.sum(-1, dtype=torch.int32)  # (B', H', nQB)
        max_kb = int(counts.max()) if counts.numel() else 0
        # A stable sort of "not listed" puts the listed indices first, in ascending order.
        order = torch.sort((~block_mask).to(torch.uint8), dim=-1, stable=True).indices[..., :max_kb]
        return cls(counts.contiguous(), order.to(torch.int32).contiguous(), block_size, causal=causal,
                   window=window, num_global=num_global, seq_lengths=seq_lengths)

    @classmethod
    def from_token_mask(cls, token_mask: Tensor, block_size: int) -> BlockMask:
        """From a bool token mask (Lq, Lk) or (B', H', Lq, Lk): lists every block holding an allowed
        pair, and keeps the token mask itself when some listed block is only partly allowed."""
        if not isinstance(token_mask, Tensor) or token_mask.dtype != torch.bool or token_mask.dim() not in (2, 4):
            raise ValueError("BlockMask.from_token_mask: token_mask must be a bool tensor (Lq, Lk) or (B', H', Lq, Lk)")
        _check_block_size("BlockMask.from_token_mask", block_size)
        if token_mask.dim() == 2:
            token_mask = token_mask[None, None]
        bm, hm, lq, lk = token_mask.shape
        nqb, nkb = _cdiv(lq, block_size), _cdiv(lk, block_size)
        padded = torch.zeros((bm, hm, nqb * block_size, nkb * block_size), dtype=torch.bool, device=token_mask.device)
        padded[:, :, :lq, :lk] = token_mask
        tiles = padded.view(bm, hm, nqb, block_size, nkb, block_size)
        any_ = tiles.any(dim=5).any(dim=3)  # (B', H', nQB, nKB)
        # A listed block is "full" when every in-range pair is allowed; padding counts as allowed.
        inside = torch.zeros_like(padded)
        inside[:, :, :lq, :lk] = True
        full = (tiles | ~inside.view_as(tiles)).all(dim=5).all(dim=3)
        keep = token_mask.contiguous() if bool((any_ & ~full).any()) else None
        m = cls.from_dense(any_, block_size, seq_lengths=(lq, lk))
        return cls(m.kv_num_blocks, m.kv_indices, block_size, token_mask=keep, seq_lengths=(lq, lk))


def sliding_window_mask(lq: int, lk: int, window: int, num_global: int = 0, causal: bool = True,
                        block_size: int = 64) -> BlockMask:
    """Each query sees the keys within ``window`` positions (with ``causal``, the ``window`` most recent
    keys up to itself) plus the first ``num_global`` global tokens; lists only blocks that hold one."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"sliding_window_mask: window must be an int >= 1, got {window!r}")
    if isinstance(num_global, bool) or not isinstance(num_global, int) or num_global < 0:
        raise ValueError(f"sliding_window_mask: num_global must be an int >= 0, got {num_global!r}")
    _check_block_size("sliding_window_mask", block_size)
    _check_lengths("sliding_window_mask", lq, lk)
    blocks = _rule_blocks(lq, lk, block_size, causal, window, num_global)
    return BlockMask.from_dense(blocks, block_size, causal=causal, window=window, num_global=num_global,
                                seq_lengths=(lq, lk))


def causal_mask(lq: int, lk: int, block_size: int = 64) -> BlockMask:
    """Causal attention with queries aligned to the end of the keys (query i at position Lk - Lq + i)."""
    _check_block_size("causal_mask", block_size)
    _check_lengths("causal_mask", lq, lk)
    blocks = _rule_blocks(lq, lk, block_size, True, 0, 0)
    return BlockMask.from_dense(blocks, block_size, causal=True, seq_lengths=(lq, lk))


def full_mask(lq: int, lk: int, block_size: int = 64) -> BlockMask:
    """Every query sees every key (dense attention through the block-sparse kernel)."""
    _check_block_size("full_mask", block_size)
    _check_lengths("full_mask", lq, lk)
    blocks = torch.ones((_cdiv(lq, block_size), _cdiv(lk, block_size)), dtype=torch.bool)
    return BlockMask.from_dense(blocks, block_size, seq_lengths=(lq, lk))


# ---- the attention pattern of a model config ----
# model.config.slimrt_attention = {"kind": "sliding_window", "window": W, "num_global": G, "block_size": B}:
# each query at position p sees key j when j <= p and (p - j < W or j < G). The decoder forwards
# turn it into a causal sliding_window_mask(window=W, num_global=G, block_size=B).

PATTERN_KIND = "sliding_window"
# The model types whose slimrt forwards run the pattern (the Llama family and GPT-2 decoders).
PATTERN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
_PATTERN_FIELDS = ("kind", "window", "num_global", "block_size")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _window_problem(v: int) -> str | None:
    return None if v >= 1 else "must be an int >= 1 (the number of most recent keys each query sees)"


def _num_global_problem(v: int) -> str | None:
    return None if v >= 0 else "must be an int >= 0 (the number of sink tokens)"


def _block_size_problem(v: int) -> str | None:
    return None if 1 <= v <= 4096 else "must be an int in [1, 4096]"


# field -> check(int value) -> None or a sentence saying what is wrong (also the recipe's parameter checks)
PATTERN_CHECKS = {"window": _window_problem, "num_global": _num_global_problem, "block_size": _block_size_problem}


def validate_pattern(pattern: Any) -> str | None:
    """None if ``pattern`` is a valid config.slimrt_attention dict, else a sentence naming the bad field."""
    if not isinstance(pattern, dict):
        return f"must be an object {{kind, window, num_global, block_size}}, got {type(pattern).__name__}"
    unknown = sorted(set(pattern) - set(_PATTERN_FIELDS))
    if unknown:
        return f"has unknown field {unknown[0]!r}; fields are {', '.join(_PATTERN_FIELDS)}"
    if pattern.get("kind") != PATTERN_KIND:
        return f"field 'kind' is {pattern.get('kind')!r}; the only supported kind is {PATTERN_KIND!r}"
    for name, check in PATTERN_CHECKS.items():
        v = pattern.get(name)
        problem = check(v) if _int(v) else "must be an int"
        if problem:
            return f"field {name!r} is {v!r}: {problem}"
    return None


def read_pattern(config: Any) -> dict[str, int] | None:
    """The validated pattern on a model config, or None; ValueError naming the field if it is bad."""
    pattern = getattr(config, "slimrt_attention", None)
    if pattern is None:
        return None
    problem = validate_pattern(pattern)
    if problem:
        raise ValueError(f"model.config.slimrt_attention {problem}")
    return {k: pattern[k] for k in ("window", "num_global", "block_size")}
