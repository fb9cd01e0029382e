"""GGUF input: the file llama.cpp users have, opened as a Hugging Face model and tokenizer.

``load_gguf(path)`` checks the file (magic, version, header, every tensor's byte range, the
architecture) before handing it to transformers, which dequantizes the tensors to float32. The
checks give one-sentence errors naming the file for the usual broken inputs (a truncated download,
a Git LFS pointer, an HTML page, an architecture transformers cannot read from GGUF) instead of a
traceback from deep inside a parser. Needs the ``gguf`` and ``accelerate`` packages
(``pip install slimrt[gguf]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimrt.errors import SlimrtError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


class GGUFError(SlimrtError, ValueError):
    """A GGUF file that slimrt cannot read: names the file and what is wrong with it."""


def find_gguf(path: str | os.PathLike) -> Path:
    """The .gguf file at ``path``, or the single .gguf file inside the directory ``path``."""
    p = Path(path)
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if q.suffix == ".gguf" and q.is_file())
        if not found:
            raise GGUFError(f"{p}: no .gguf file in this directory")
        if len(found) > 1:
            raise GGUFError(f"{p}: holds {len(found)} .gguf files ({', '.join(q.name for q in found)}); "
                            "pass the file itself")
        return found[0]
    if not p.exists():
        raise GGUFError(f"{p}: no such file")
    if not p.is_file():
        raise GGUFError(f"{p}: not a regular file")
    return p


def is_gguf(path: str | os.PathLike) -> bool:
    """True when ``path`` is a .gguf file or a directory holding one (no model config beside it)."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    return p.is_dir() and not (p / "config.json").exists() and any(q.suffix == ".gguf" for q in p.iterdir())


def _what_is_it(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model file (run `git lfs pull`)"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not a model file"
    if not head:
        return "empty"
    return f"not a GGUF file (it starts with {head[:8]!r}, GGUF files start with {GGUF_MAGIC!r})"


# GGUF value types (gguf.GGUFValueType) -> bytes of one scalar; 8: string (u64 length + bytes), 9: array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 8


class _Walker:
    """Bounds-checked walk over a GGUF header: the key/value section and the tensor infos.

    The gguf package's reader trusts the counts it reads: an array claiming 2^60 elements makes it
    loop for ever (reads past the end come back empty, so its offset stops advancing) while its lists
    grow until the process is killed. Every count here is checked against the bytes left before any
    loop runs, so the walk reads each byte at most once and ends in O(file size)."""

    def __init__(self, path: Path, buf: Any, size: int) -> None:
        self.path, self.buf, self.size, self.off = path, buf, size, 0

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: corrupt or truncated GGUF ({what} at byte {self.off})")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.off + n > self.size:
            raise self.fail(f"{what} of {n} bytes runs past the end of the {self.size}-byte file")
        start = self.off
        self.off += n
        return start

    def u32(self, what: str) -> int:
        return int.from_bytes(self.buf[self.take(4, what):self.off], "little")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.buf[self.take(8, what):self.off], "little")

    def string(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        return bytes(self.buf[self.take(n, what):self.off])

    def value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[vtype], what)
        elif vtype == _STRING:
            self.take(self.u64(f"{what} length"), what)
        elif vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise self.fail(f"{what} nests arrays deeper than {_MAX_NESTING} levels")
            itype, count = self.u32(f"{what} item type"), self.u64(f"{what} count")
            if itype in _SCALAR_SIZES:
                self.take(count * _SCALAR_SIZES[itype], f"{what} ({count} items)")
                return
            if itype not in (_STRING, _ARRAY):
                raise self.fail(f"{what} has unknown item type {itype}")
            if count * (8 if itype == _STRING else 12) > self.size - self.off:  # each item's smallest size
                raise self.fail(f"{what} claims {count} items, more than the rest of the file holds")
            for _ in range(count):
                self.value(itype, what, depth + 1)
        else:
            raise self.fail(f"{what} has unknown value type {vtype}")

    def header(self) -> dict[str, int]:
        """Walks the whole header; returns {key: value type} of the key/value section."""
        self.take(8, "magic and version")
        n_tensors, n_kv = self.u64("tensor count"), self.u64("key/value count")
        if n_kv * 12 > self.size or n_tensors * 24 > self.size:  # the smallest entry of each
            raise self.fail(f"{n_kv} key/value pairs and {n_tensors} tensors cannot fit in {self.size} bytes")
        types: dict[str, int] = {}
        for i in range(n_kv):
            key = self.string(f"key {i}").decode("utf-8", "replace")
            if key in types:
                raise self.fail(f"key {key!r} appears twice")
            types[key] = self.u32(f"type of {key!r}")
            self.value(types[key], f"value of {key!r}")
        for i in range(n_tensors):
            name = self.string(f"tensor {i} name").decode("utf-8", "replace")
            n_dims = self.u32(f"dimension count of tensor {name!r}")
            if n_dims > _MAX_DIMS:
                raise self.fail(f"tensor {name!r} has {n_dims} dimensions, more than {_MAX_DIMS}")
            elems = 1
            for _ in range(n_dims):
                elems *= self.u64(f"shape of tensor {name!r}")
            if elems >= 2**63:
                raise self.fail(f"tensor {name!r} has a shape whose element count overflows 64 bits")
            self.take(12, f"type and offset of tensor {name!r}")
        return types


def _check_header(p: Path, size: int) -> dict[str, int]:
    import mmap

    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _Walker(p, buf, size).header()


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Validates the GGUF file and returns {"path", "architecture", "version", "tensors", "name"}."""
    p = find_gguf(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(64)
    if size < 24 or head[:4] != GGUF_MAGIC:
        raise GGUFError(f"{p}: {_what_is_it(head)}" if head[:4] != GGUF_MAGIC else f"{p}: truncated ({size} bytes)")
    version = int.from_bytes(head[4:8], "little")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"{p}: GGUF version {version}; slimrt reads versions {', '.join(map(str, SUPPORTED_VERSIONS))}")
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ImportError("reading GGUF files needs the `gguf` package: pip install 'slimrt[gguf]' "
                          "(gguf and accelerate)") from e
    types = _check_header(p, size)  # before the gguf package's reader, which trusts the counts it reads
    for key in ("general.architecture", "general.name"):
        if key in types and types[key] != _STRING:
            raise GGUFError(f"{p}: field {key} must be a string, got value type {types[key]}")
    try:
        reader = GGUFReader(str(p))
    except Exception as e:  # the parser's own errors (bad header, truncated data): one message naming the file
        raise GGUFError(f"{p}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise GGUFError(f"{p}: tensor {t.name!r} runs past the end of the file ({end} > {size} bytes): truncated")
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise GGUFError(f"{p}: no general.architecture field")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8", "replace")
    name_field = reader.fields.get("general.name")
    name = bytes(name_field.parts[name_field.data[0]]).decode("utf-8", "replace") if name_field else p.stem
    return {"path": str(p), "architecture": arch, "version": version, "tensors": len(reader.tensors), "name": name}


def supported_architectures() -> list[str]:
    """The GGUF architectures this transformers can load."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(GGUF_CONFIG_MAPPING)


def _validated(path: str | os.PathLike) -> dict[str, Any]:
    """``inspect(path)`` plus the architecture check: everything load_gguf checks before transformers
    reads the file (the fuzz target tests/fuzz/fuzz_gguf.py runs exactly this)."""
    info = inspect(path)
    archs = supported_architectures()
    if info["architecture"] not in archs:
        raise GGUFError(f"{info['path']}: architecture {info['architecture']!r} cannot be loaded from GGUF by "
                        f"transformers (it reads {', '.join(archs)}); convert the original Hugging Face model instead")
    return info


def load_gguf(path: str | os.PathLike, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file: a Hugging Face causal LM with float32 weights (dequantized
    from the file's quantization) and its tokenizer, chat template included.

    ``path``: a .gguf file or a directory holding exactly one. Errors name the file.
    """
    import torch

    p = Path(_validated(path)["path"])
    try:
        import accelerate  # noqa: F401  (transformers needs it to load GGUF)
    except ImportError as e:
        raise ImportError("loading GGUF models needs `accelerate`: pip install 'slimrt[gguf]'") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype or torch.float32)
    return model.eval(), tokenizer
