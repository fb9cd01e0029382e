"""slimrt.json: deterministic writing and strict validation of the checkpoint's metadata.

Everything in slimrt.json is inert data: strings are never evaluated, formatted as templates or
used to import anything. Module types are looked up in ``slimrt.nn.MODULE_TYPES`` only.

slimrt.json (format_version 2; sorted keys, no timestamps):
  format_version, slimrt_version, created_by {slimrt, torch[, transformers]}
  meta_sha256 sha256 of the canonical JSON of every other field (see ``digest``); required from
              format 2 on. Format 1 files (slimrt before the digest) have none and still load: their
              metadata is then covered only by the checks below, as it always was. The digest is a
              checksum against corruption and hand edits, not a signature: whoever rewrites the
              file can recompute it (a deliberate downgrade to format 1 drops it, too).
  model       {"kind": "hf", "architecture", "config", "dtype", "generation_config"}
              | {"kind": "sequential", "layers": [{"type": "Linear", "in_features": .., "dtype": ..}, ..]}
              | {"kind": "custom", "class"}   (load then needs model=<skeleton>)
  modules     {qualified name: {"type": a key of slimrt.nn.MODULE_TYPES, "config": slimrt_config()}}
  compression model.slimrt_meta, verbatim (non-finite floats written as "Infinity"/"-Infinity"/"NaN")
  files       {relative file name: sha256}, model.safetensors and any tokenizer files
  entropy     null | "zstd";  encoded {tensor: {"codec": "zstd", "dtype", "shape"}} (stored as 1-D uint8)
  tied        [[stored name, alias name], ..]   (one tensor under two names: stored once, re-tied)
  buffers     names of the non-persistent buffers stored (e.g. rotary inv_freq); slimrt modules'
              own non-persistent buffers are rebuilt by their repack() instead
  tokenizer   null | {"class", "files"}
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from slimrt.errors import CheckpointError

FORMAT_VERSION = 2
DIGEST_FIELD = "meta_sha256"
DIGEST_SINCE = 2  # the first format version whose slimrt.json must carry DIGEST_FIELD
META_NAME = "slimrt.json"
TENSORS_NAME = "model.safetensors"
META_CAP = 64 * 2**20  # configs and reports are KBs; a larger slimrt.json is corrupt or hostile
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPE_NAMES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "float8_e4m3fn", "float8_e5m2"}


def to_json(obj: Any, where: str) -> Any:
    """A JSON-able copy of ``obj``: tuples become lists, numpy/torch scalars plain numbers, and
    non-finite floats the strings "Infinity", "-Infinity" and "NaN" (strict JSON has no such numbers)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}; JSON keys must be strings")
            out[k] = to_json(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return to_json(obj.item(), where)  # numpy / torch scalar
    raise TypeError(f"{where} holds a {type(obj).__name__}, which is not JSON data")


def dumps(meta: dict[str, Any]) -> bytes:
    """Byte-identical output for identical input: sorted keys, fixed separators, no timestamps."""
    return (json.dumps(meta, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def canonical(meta: dict[str, Any]) -> bytes:
    """The bytes ``DIGEST_FIELD`` hashes: every other field as compact, sorted-key ASCII JSON.

    Computed from the parsed object, so whitespace and key order in the file do not matter and any
    change of a value does (json writes floats as their shortest round-trip repr: parse + dump is
    the identity on values slimrt wrote).
    """
    body = {k: v for k, v in meta.items() if k != DIGEST_FIELD}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except ValueError:  # a literal such as 1e999 parses to inf, which JSON cannot hold
        raise CheckpointError(f"{META_NAME} holds a number outside the float range (such as 1e999)") from None
    except RecursionError:
        raise CheckpointError(f"{META_NAME} nests its JSON too deeply") from None


def digest(meta: dict[str, Any]) -> str:
    """sha256 (hex) of ``canonical(meta)``: the value of ``DIGEST_FIELD``."""
    return hashlib.sha256(canonical(meta)).hexdigest()


def stamp(meta: dict[str, Any]) -> dict[str, Any]:
    """Sets ``meta[DIGEST_FIELD]`` to the digest of the rest of ``meta``; returns ``meta``."""
    meta[DIGEST_FIELD] = digest(meta)
    return meta


def _check_digest(meta: dict[str, Any], version: int) -> None:
    stored = meta.get(DIGEST_FIELD)
    if stored is None:
        if version >= DIGEST_SINCE:
            raise CheckpointError(f"{META_NAME}: field '{DIGEST_FIELD}' is missing; format version {version} "
                                  "requires the checksum of the metadata")
        return  # format 1: written before the digest existed
    if not isinstance(stored, str) or not _SHA256.fullmatch(stored):
        raise CheckpointError(f"{META_NAME}: field '{DIGEST_FIELD}' must be a lowercase hex sha256")
    actual = digest(meta)
    if actual != stored:
        raise CheckpointError(f"{META_NAME}: metadata checksum mismatch (corrupt or modified file): its content "
                              f"hashes to {actual[:16]}..., but '{DIGEST_FIELD}' records {stored[:16]}...")


class _Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _constant(name: str) -> None:
    raise ValueError(f"non-standard constant {name}")


def loads(data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_constant)
    except _Duplicate as e:
        raise CheckpointError(f"{META_NAME}: field {e.args[0]!r} appears twice") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{META_NAME} is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{META_NAME} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{META_NAME} must hold a JSON object, got {type(meta).__name__}")
    return validate(meta)


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


def _field(d: dict[str, Any], key: str, kind: type, where: str, optional: bool = False) -> Any:
    path = f"{where}.{key}" if where else key
    if key not in d:
        if optional:
            return None
        raise CheckpointError(f"{META_NAME}: field '{path}' is missing")
    value = d[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"{META_NAME}: field '{path}' must be {_TYPE_NAMES[kind]}, "
                              f"got {type(value).__name__}")
    return value


def check_file_name(name: str, where: str) -> None:
    """A path relative to the checkpoint directory that cannot leave it."""
    parts = name.split("/")
    if (not name or len(name) > 255 or name.startswith("/") or "\\" in name or "\x00" in name
            or ":" in name or any(p in ("", ".", "..") for p in parts)):
        raise CheckpointError(f"{META_NAME}: {where} {name!r} is not a plain relative file name "
                              "(no '..', no absolute paths)")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise CheckpointError(f"{META_NAME}: {where} {name!r} is a pickle file, which slimrt never loads")


def validate(meta: dict[str, Any]) -> dict[str, Any]:
    """Checks every field slimrt reads; returns ``meta`` unchanged."""
    from slimrt._version import __version__
    from slimrt.nn import MODULE_TYPES

    version = _field(meta, "format_version", int, "")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{META_NAME}: checkpoint format version {version} is newer than the version "
                              f"{FORMAT_VERSION} this slimrt {__version__} reads; upgrade slimrt")
    if version < 1:
        raise CheckpointError(f"{META_NAME}: field 'format_version' is {version}; versions start at 1")
    # Before any other field is read: what follows checks values, this checks that nobody changed them.
    _check_digest(meta, version)
    _field(meta, "slimrt_version", str, "")
    _field(meta, "created_by", dict, "", optional=True)

    model = _field(meta, "model", dict, "")
    kind = _field(model, "kind", str, "model")
    if kind not in ("hf", "sequential", "custom"):
        raise CheckpointError(f"{META_NAME}: field 'model.kind' is {kind!r}, not 'hf', 'sequential' or 'custom'")
    if kind == "hf":
        _field(model, "architecture", str, "model")
        _field(model, "config", dict, "model")
        _field(model, "dtype", str, "model")
        _field(model, "generation_config", dict, "model", optional=True)
    elif kind == "sequential":
        _field(model, "layers", list, "model")

    modules = _field(meta, "modules", dict, "")
    for name, entry in modules.items():
        where = f"modules.{name}"
        if not name or len(name) > 1024 or any(not p or not p.isprintable() or p != p.strip()
                                                for p in name.split(".")):
            raise CheckpointError(f"{META_NAME}: module name {name[:80]!r} is not a dotted module path")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{META_NAME}: field '{where}' must be an object")
        mtype = _field(entry, "type", str, where)
        if mtype not in MODULE_TYPES:
            raise CheckpointError(f"{META_NAME}: field '{where}.type' is {mtype!r}, not a slimrt module type "
                                  f"(known: {', '.join(sorted(MODULE_TYPES))})")
        cfg = _field(entry, "config", dict, where)
        for key, value in cfg.items():
            if not (value is None or isinstance(value, (bool, int, float, str))
                    or (isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value))):
                raise CheckpointError(f"{META_NAME}: field '{where}.config.{key}' must be a number, string, "
                                      "bool or a list of them")
            if key.endswith("dtype") and (not isinstance(value, str) or value not in _DTYPE_NAMES):  # modules getattr(torch, ...) these
                raise CheckpointError(f"{META_NAME}: field '{where}.config.{key}' is {value!r}, not one of "
                                      f"{sorted(_DTYPE_NAMES)}")

    compression = _field(meta, "compression", dict, "", optional=True)
    del compression  # inert: handed back to the caller as model.slimrt_meta, never interpreted here

    files = _field(meta, "files", dict, "")
    if TENSORS_NAME not in files:
        raise CheckpointError(f"{META_NAME}: field 'files' does not list {TENSORS_NAME}")
    for name, digest in files.items():
        check_file_name(name, "file name")
        if name == META_NAME:
            raise CheckpointError(f"{META_NAME}: field 'files' must not list {META_NAME} itself")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise CheckpointError(f"{META_NAME}: field 'files.{name}' must be a lowercase hex sha256")

    entropy = meta.get("entropy")
    if entropy not in (None, "zstd"):
        raise CheckpointError(f"{META_NAME}: field 'entropy' is {entropy!r}, not null or 'zstd'")
    encoded = _field(meta, "encoded", dict, "", optional=True) or {}
    if encoded and entropy is None:
        raise CheckpointError(f"{META_NAME}: field 'encoded' lists entropy-coded tensors but 'entropy' is null")
    for name, spec in encoded.items():
        where = f"encoded.{name}"
        if not isinstance(spec, dict):
            raise CheckpointError(f"{META_NAME}: field '{where}' must be an object")
        if _field(spec, "codec", str, where) != "zstd":
            raise CheckpointError(f"{META_NAME}: field '{where}.codec' is {spec['codec']!r}, not 'zstd'")
        _field(spec, "dtype", str, where)
        shape = _field(spec, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape):
            raise CheckpointError(f"{META_NAME}: field '{where}.shape' must be a list of non-negative integers")

    for key in ("tied", "buffers"):
        items = _field(meta, key, list, "", optional=True) or []
        for i, item in enumerate(items):
            ok = (isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)
                  if key == "tied" else isinstance(item, str))
            if not ok:
                expected = "a [stored name, alias name] pair" if key == "tied" else "a tensor name"
                raise CheckpointError(f"{META_NAME}: field '{key}[{i}]' must be {expected}")
    tokenizer = _field(meta, "tokenizer", dict, "", optional=True)
    if tokenizer is not None:
        for i, name in enumerate(_field(tokenizer, "files", list, "tokenizer")):
            if not isinstance(name, str) or name not in files:
                raise CheckpointError(f"{META_NAME}: field 'tokenizer.files[{i}]' is {name!r}, "
                                      "which is not listed under 'files'")
    return meta
