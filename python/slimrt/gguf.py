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


def load_gguf(path: str | os.PathLike, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file: a Hugging Face causal LM with float32 weights (dequantized
    from the file's quantization) and its tokenizer, chat template included.

    ``path``: a .gguf file or a directory holding exactly one. Errors name the file.
    """
    import torch

    info = inspect(path)
    p = Path(info["path"])
    archs = supported_architectures()
    if info["architecture"] not in archs:
        raise GGUFError(f"{p}: architecture {info['architecture']!r} cannot be loaded from GGUF by transformers "
                        f"(it reads {', '.join(archs)}); convert the original Hugging Face model instead")
    try:
        import accelerate  # noqa: F401  (transformers needs it to load GGUF)
    except ImportError as e:
        raise ImportError("loading GGUF models needs `accelerate`: pip install 'slimrt[gguf]'") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype or torch.float32)
    return model.eval(), tokenizer
