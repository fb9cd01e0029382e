"""save(model, path): a checkpoint directory, written atomically and deterministically.

Every tensor of a compressed model (slimrt modules' int8 weights, scales, factors, masks; dense
layers; non-persistent buffers such as rotary inv_freq), the architecture (skeleton.py), each
slimrt module's type and config, ``model.slimrt_meta`` under "compression", and the sha256 of every
file go into model.safetensors + slimrt.json (format.py). The write is atomic: a temp dir next to
the target, fsync, rename, fsync the parent; identical input gives identical bytes. slimrt.json
carries the sha256 of its own canonical content (format.py). A save killed mid-write leaves its
temp dir; the next save or load of the target removes it (staging.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimrt.checkpoint import format as fmt
from slimrt.checkpoint import staging
from slimrt.checkpoint.modules import nonpersistent_buffers, slimrt_modules, type_name
from slimrt.errors import CheckpointExistsError

ZSTD_LEVEL = 3  # on MiniLM int8 weights levels 3..19 all reach 0.899 of raw size; 3 is ~10x faster than 15


@dataclass(frozen=True)
class SaveResult:
    """What save wrote: ``tensor_bytes`` is the raw size of all tensors, ``stored_bytes`` their size
    in model.safetensors after entropy coding, ``bytes_saved`` the difference."""
    path: str
    total_bytes: int
    tensor_bytes: int
    stored_bytes: int
    bytes_saved: int
    entropy: str | None


def _collect_tensors(model: nn.Module, slim: dict[str, nn.Module]) -> tuple[dict[str, torch.Tensor], list, list]:
    """(tensors to store, tied [stored, alias] pairs, names of the non-persistent buffers saved)."""
    named = list(model.state_dict().items())
    buffers = nonpersistent_buffers(model, slim)
    tensors: dict[str, torch.Tensor] = {}
    tied: list[list[str]] = []
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in named + buffers:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save: state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
        if t.device.type == "meta":
            raise ValueError(f"save: tensor {name!r} is on the meta device (never materialised)")
        t = t.detach()
        if t.numel() > 0:
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
            if key in seen:  # the same tensor under two names (tied embedding / lm_head): store it once
                tied.append([seen[key], name])
                continue
            seen[key] = name
        t = t.cpu()
        ptr = t.untyped_storage().data_ptr()
        whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
        if t.numel() > 0 and (ptr in storages or not whole):
            t = t.contiguous().clone()  # views and partial overlaps are stored as independent copies
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return tensors, tied, [n for n, _ in buffers]


def _encode_zstd(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    encoded = {}
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype != torch.int8 or t.numel() < 256:
            continue
        raw = t.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
        packed = cctx.compress(raw)
        if len(packed) < len(raw):  # incompressible payloads stay raw
            encoded[name] = {"codec": "zstd", "dtype": "int8", "shape": list(t.shape)}
            tensors[name] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
    return encoded


def _fsync_path(path: str, directory: bool = False) -> None:
    if directory and not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open (or fsync) a directory
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_tensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"})


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two directory entries (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: the kernel or filesystem cannot exchange
        return False
    raise OSError(err, f"renameat2({a!r}, {b!r}) failed: {os.strerror(err)}")


def _commit(tmp: str, target: str) -> None:
    """Moves the finished temp dir to ``target``; an existing target is swapped out, then deleted."""
    parent = os.path.dirname(target)
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp)  # tmp now holds the previous checkpoint
    else:  # two renames: a kill between them leaves the old checkpoint under its ".old-" name
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
        os.replace(target, aside)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(aside, target)  # put the previous checkpoint back before reporting the failure
            raise
        shutil.rmtree(aside)
    _fsync_path(parent, directory=True)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is racy with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_target(target: str, overwrite: bool) -> None:
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise CheckpointExistsError(f"save: {target} already exists; pass overwrite=True to replace it")
    if os.path.islink(target) or not os.path.isdir(target):
        raise CheckpointExistsError(f"save: {target} exists and is a symlink or not a directory; "
                                    "refusing to replace it")
    if os.listdir(target) and not os.path.isfile(os.path.join(target, fmt.META_NAME)):
        raise CheckpointExistsError(f"save: {target} is a non-empty directory without {fmt.META_NAME}; "
                                    "refusing to replace something that is not a slimrt checkpoint")


def save(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False,
         entropy: str | None = None) -> SaveResult:
    """Writes ``model`` (a module containing slimrt modules, or a plain one) as a checkpoint directory.

    A sentence-transformers SentenceTransformer is stored as its transformers model with its pooling,
    normalization and max_seq_length (checkpoint/sentence.py), so ``slimrt.load`` embeds as it does.

    ``entropy="zstd"`` stores int8 payloads zstd-coded (decoded transparently on load). Refuses an
    existing ``path`` unless ``overwrite=True``; the replacement is atomic either way.
    """
    from slimrt._version import __version__
    from slimrt.checkpoint.skeleton import describe_model
    from slimrt.nn import MODULE_TYPES

    if entropy not in (None, "zstd"):
        raise ValueError(f"save: entropy={entropy!r} is not None or 'zstd'")
    target = os.path.abspath(os.fspath(path))
    _check_target(target, overwrite)
    slimrt_meta = getattr(model, "slimrt_meta", None)
    from slimrt.checkpoint import sentence

    if sentence.is_sentence_transformer(model):  # its transformers model + pooling, normalize, max_seq_length
        model, slimrt_meta, st_tokenizer = sentence.prepare(model)
        tokenizer = tokenizer if tokenizer is not None else st_tokenizer
    slim = slimrt_modules(model)
    section = describe_model(model, tuple(MODULE_TYPES.values()))
    modules = {name: {"type": type_name(m), "config": fmt.to_json(m.slimrt_config(), f"modules.{name}.config")}
               for name, m in slim.items()}
    tensors, tied, buffers = _collect_tensors(model, slim)
    tensor_bytes = sum(t.nbytes for t in tensors.values())
    encoded = _encode_zstd(tensors) if entropy == "zstd" else {}
    stored_bytes = sum(t.nbytes for t in tensors.values())
    created_by = {"slimrt": __version__, "torch": torch.__version__.split("+")[0]}
    if section["kind"] == "hf":
        import transformers

        created_by["transformers"] = transformers.__version__
    meta: dict[str, Any] = {
        "format_version": fmt.FORMAT_VERSION, "slimrt_version": __version__, "created_by": created_by,
        "model": fmt.to_json(section, "model"), "modules": modules,
        "compression": fmt.to_json(slimrt_meta, "model.slimrt_meta"),
        "entropy": entropy, "encoded": encoded, "tied": tied, "buffers": buffers, "tokenizer": None,
    }

    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging.sweep(target)  # temp dirs of earlier saves of this target that were killed mid-write
    tmp, lock = staging.claim(target)
    try:
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint gets the usual permissions
        files: dict[str, str] = {}
        if tokenizer is not None:
            if not callable(getattr(tokenizer, "save_pretrained", None)):
                raise TypeError(f"save: tokenizer must be a transformers tokenizer (with save_pretrained), "
                                f"got {type(tokenizer).__name__}")
            tokenizer.save_pretrained(tmp)
            names = sorted(str(p.relative_to(tmp).as_posix()) for p in Path(tmp).rglob("*") if p.is_file())
            for name in names:
                fmt.check_file_name(name, "tokenizer file")
                if name in (fmt.META_NAME, fmt.TENSORS_NAME):
                    raise ValueError(f"save: the tokenizer wrote {name}, which clashes with a checkpoint file")
            meta["tokenizer"] = {"class": type(tokenizer).__name__, "files": names}
            for name in names:
                files[name] = _sha256_file(os.path.join(tmp, name))
                _fsync_path(os.path.join(tmp, name))
        tensors_path = os.path.join(tmp, fmt.TENSORS_NAME)
        _write_tensors(tensors, tensors_path)
        _fsync_path(tensors_path)
        files[fmt.TENSORS_NAME] = _sha256_file(tensors_path)
        meta["files"] = files
        fmt.stamp(meta)  # last: the digest covers every other field
        fmt.validate(meta)  # what we write must be what we accept
        meta_path = os.path.join(tmp, fmt.META_NAME)
        with open(meta_path, "wb") as f:
            f.write(fmt.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        for name in [*files, fmt.META_NAME]:  # some writers create 0600 files; use the umask like open() does
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        total = sum(os.path.getsize(os.path.join(tmp, n)) for n in [*files, fmt.META_NAME])
        _fsync_path(tmp, directory=True)
        _commit(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        staging.release(lock)
    return SaveResult(path=target, total_bytes=total, tensor_bytes=tensor_bytes, stored_bytes=stored_bytes,
                      bytes_saved=tensor_bytes - stored_bytes, entropy=entropy)

