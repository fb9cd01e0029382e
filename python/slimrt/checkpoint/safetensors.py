"""A validating safetensors reader: every byte of a hostile file is checked before use.

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON
``{"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}}``,
then the data region, which the tensors must tile exactly (no overlap, no gap, nothing past the end).
The header is parsed and checked in full before any tensor bytes are read or allocated; tensors are
then read one by one into their own aligned buffers while the file's sha256 is computed on the way.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import torch

from slimrt.errors import CheckpointError

HEADER_CAP = 100 * 2**20  # real headers are KBs to a few MB; a larger claim is corruption or an attack
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_BYTES = 2**63 - 1
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data region
    end: int


def _sniff(head: bytes) -> str | None:
    """What a file that is not a safetensors file looks like, from its first bytes."""
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (the real file was never downloaded: run `git lfs pull`)"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML/XML page (a download that returned a web page instead of the file)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save file?), which slimrt never unpickles"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, which slimrt never unpickles"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "a zstd-compressed file"
    if text.startswith((b"{", b"[")):
        return "a JSON text file"
    return None


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_header(fname: str, f: BinaryIO, size: int) -> tuple[dict[str, Entry], int, bytes]:
    """Validates the header of an open file of ``size`` bytes.

    Returns (entries by name, byte offset of the data region, the raw bytes read so far).
    """
    if size == 0:
        raise CheckpointError(f"{fname} is empty (0 bytes), not a safetensors file")
    head = f.read(min(size, 64))
    n = int.from_bytes(head[:8], "little") if size >= 8 else -1
    plausible = 0 <= n <= HEADER_CAP and 8 + n <= size and head[8:9] == b"{"
    what = None if plausible else _sniff(head)  # only a failed parse is worth a guess at what it is
    if what is not None:
        raise CheckpointError(f"{fname} is {what}, not a safetensors file")
    if size < 8:
        raise CheckpointError(f"{fname} is truncated: {size} bytes is shorter than the 8-byte header length")
    if n > HEADER_CAP:
        raise CheckpointError(f"{fname} claims a {n}-byte header, over the {HEADER_CAP}-byte cap: "
                              "corrupt or not a safetensors file")
    if 8 + n > size:
        raise CheckpointError(f"{fname} is truncated or not a safetensors file: its {n}-byte header runs past "
                              f"the end of the {size}-byte file")
    f.seek(8)
    raw = f.read(n)
    if len(raw) != n:
        raise CheckpointError(f"{fname} is truncated: the header ends after {len(raw)} of {n} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{fname}: the safetensors header is not UTF-8 (bad byte at {e.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _Duplicate as e:
        raise CheckpointError(f"{fname}: the safetensors header names tensor {e.args[0]!r} twice") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{fname}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{fname}: the safetensors header is not a JSON object")
    meta = obj.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{fname}: the safetensors '__metadata__' must map strings to strings")
    data_len = size - 8 - n
    entries = {name: _entry(fname, name, spec, data_len) for name, spec in obj.items()}
    _check_tiling(fname, entries, data_len)
    return entries, 8 + n, head[:8] + raw


def _entry(fname: str, name: str, spec: object, data_len: int) -> Entry:
    where = f"{fname}: tensor {name!r}"
    if not name or len(name) > 1024 or not name.isprintable():
        raise CheckpointError(f"{fname}: tensor name {name[:80]!r} is empty, too long or not printable")
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{where} must have exactly the fields dtype, shape and data_offsets")
    dtype_name, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise CheckpointError(f"{where} has unknown dtype {dtype_name!r}; supported: {', '.join(DTYPES)}")
    dtype = DTYPES[dtype_name]

    def is_index(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or len(shape) > 16 or not all(is_index(d) for d in shape):
        raise CheckpointError(f"{where} has an invalid shape {shape!r} (expected up to 16 non-negative integers)")
    nbytes = dtype.itemsize
    for d in shape:  # Python ints do not overflow: compare against the 64-bit limit explicitly
        nbytes *= d
        if nbytes > _MAX_BYTES:
            raise CheckpointError(f"{where} has shape {shape} whose size overflows 64 bits")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_index(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where} has invalid data_offsets {offsets!r} (expected [begin, end], begin <= end)")
    begin, end = offsets
    if end - begin != nbytes:
        raise CheckpointError(f"{where}: shape {shape} x {dtype_name} is {nbytes} bytes but its byte range "
                              f"[{begin}, {end}) holds {end - begin}")
    if end > data_len:
        raise CheckpointError(f"{where} ends at byte {end}, past the end of the {data_len}-byte data region "
                              "(truncated file?)")
    return Entry(name, dtype, tuple(shape), begin, end)


def _check_tiling(fname: str, entries: dict[str, Entry], data_len: int) -> None:
    pos, prev = 0, None
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end, e.name)):
        if e.begin < pos:
            raise CheckpointError(f"{fname}: tensor {e.name!r} overlaps tensor {prev!r} (bytes {e.begin} < {pos})")
        if e.begin > pos:
            raise CheckpointError(f"{fname}: gap of {e.begin - pos} unused bytes before tensor {e.name!r}")
        pos, prev = e.end, e.name
    if pos != data_len:
        raise CheckpointError(f"{fname}: {data_len - pos} trailing bytes after the last tensor")


def read_tensors(path: str, fname: str) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a safetensors file, validated, each in its own buffer; and the file's sha256."""
    with open(path, "rb") as f, ThreadPoolExecutor(1) as hasher:
        size = os.fstat(f.fileno()).st_size
        entries, data_start, prefix = parse_header(fname, f, size)
        digest = hashlib.sha256(prefix)
        f.seek(data_start)
        tensors: dict[str, torch.Tensor] = {}
        # sha256 and the read each run near 1 GB/s; hashing chunk i (one worker: in order, GIL
        # released) while reading chunk i+1 hides most of the hash.
        for e in sorted(entries.values(), key=lambda e: (e.begin, e.end, e.name)):
            buf = torch.empty(e.end - e.begin, dtype=torch.uint8)  # torch allocations are 64-byte aligned
            view = memoryview(buf.numpy())
            for start in range(0, len(buf), _CHUNK):
                chunk = view[start:start + _CHUNK]
                got = f.readinto(chunk)
                if got != len(chunk):
                    raise CheckpointError(f"{fname} is truncated: tensor {e.name!r} ends early")
                hasher.submit(digest.update, chunk)
            tensors[e.name] = buf
        if f.read(1):
            raise CheckpointError(f"{fname} grew while it was being read")
    for e in entries.values():  # after the with: every hash task has finished
        buf = tensors[e.name]
        if e.dtype == torch.bool and len(buf) and int(buf.max()) > 1:
            raise CheckpointError(f"{fname}: bool tensor {e.name!r} holds bytes other than 0 and 1")
        tensors[e.name] = buf.view(e.dtype).reshape(e.shape)
    return tensors, digest.hexdigest()
