"""load_model(path) and read_metadata(path): a checkpoint directory, treated as hostile.

slimrt.json is validated (format.py) and the safetensors header parsed and checked
(safetensors.py) before any tensor bytes are read; every file's checksum is checked; the model is
rebuilt on the meta device (skeleton.py), the allow-listed slimrt modules are swapped in, and
every tensor's name, dtype and shape is compared with the skeleton before it is assigned
(load_state_dict(assign=True)). No pickle anywhere. A slimrt module may define
``slimrt_validate()`` (raise ValueError): it runs after loading, and its message becomes a
CheckpointError naming the layer (e.g. block-sparse layout checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from slimrt.checkpoint import format as fmt
from slimrt.checkpoint import staging
from slimrt.checkpoint.modules import nonpersistent_buffers
from slimrt.checkpoint.safetensors import DTYPE_NAMES, read_tensors
from slimrt.errors import CheckpointError


@dataclass
class LoadedCheckpoint:
    """What load_model returns: the model, its tokenizer and HF config (or None), and the slimrt.json."""

    model: nn.Module
    tokenizer: Any | None
    config: Any | None
    meta: dict[str, Any]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated slimrt.json of a checkpoint (no tensor is read)."""
    root = check_directory(path)
    with _located(root):
        return fmt.loads(read_file(root, fmt.META_NAME, fmt.META_CAP))


def load_model(path: str | os.PathLike, model: nn.Module | None = None,
               device: str | torch.device = "cpu", thin: bool = False) -> LoadedCheckpoint:
    """Loads a checkpoint written by :func:`save`; raises CheckpointError naming what is wrong.

    ``model``: a skeleton to load into (required for checkpoints of kind "custom"; it is modified in
    place). The returned model is in eval mode on ``device``, with ``model.slimrt_meta`` restored.
    ``thin``: for the families slimrt's lean forwards run (checkpoint/thin.py), build the model from
    plain torch modules and the tokenizer from its tokenizer.json, without importing transformers (a
    weights-only model for slimrt.Runner; others load as usual).
    """
    root = check_directory(path)
    staging.sweep(root)  # temp dirs that killed saves of this checkpoint left next to it
    with _located(root):
        meta = fmt.loads(read_file(root, fmt.META_NAME, fmt.META_CAP))
        tensors = read_model_tensors(root, meta)
        other_files = {}
        for name, digest in sorted(meta["files"].items()):
            if name != fmt.TENSORS_NAME:
                data = read_file(root, name, 1 << 31)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise CheckpointError(f"{name} in {root}: sha256 checksum mismatch (corrupt or modified file)")
                other_files[name] = data
        model, config = assemble(meta, tensors, model, thin=thin)
        model.eval()
        if torch.device(device).type != "cpu":
            model.to(device)
        model.slimrt_meta = meta.get("compression")
        tokenizer = _load_tokenizer(meta, other_files, thin) if meta.get("tokenizer") else None
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, config=config, meta=meta)


def _load_tokenizer(meta: dict[str, Any], files: dict[str, bytes], thin: bool = False) -> Any:
    names = meta["tokenizer"]["files"]
    if thin and "tokenizer.json" in names:
        from slimrt.tokenizer import Tokenizer

        try:
            return Tokenizer.from_files({n: files[n] for n in names})
        except Exception as e:
            raise CheckpointError(f"the tokenizer files of the checkpoint cannot be loaded: "
                                  f"{type(e).__name__}: {e}") from None
    import transformers

    # From a private copy of the verified bytes only: nothing unlisted or modified since the check.
    with tempfile.TemporaryDirectory(prefix="slimrt-tok-") as tmp:
        for name in meta["tokenizer"]["files"]:
            dest = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(files[name])
        try:
            return transformers.AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise CheckpointError(f"the tokenizer files of the checkpoint cannot be loaded: "
                                  f"{type(e).__name__}: {e}") from None


@contextlib.contextmanager
def _located(root: str) -> Iterator[None]:
    """Puts the checkpoint directory into error messages that name only a file inside it."""
    try:
        yield
    except CheckpointError as e:
        msg = str(e)
        if root in msg:
            raise
        raise CheckpointError(os.path.join(root, msg) if msg.startswith((fmt.META_NAME, fmt.TENSORS_NAME))
                              else f"{root}: {msg}") from None


def check_directory(path: str | os.PathLike) -> str:
    """The checkpoint directory as an absolute path, after refusing pickles and non-checkpoints."""
    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root):
        raise CheckpointError(f"{root} does not exist")
    if not os.path.isdir(root):
        if root.lower().endswith(fmt.PICKLE_SUFFIXES):
            raise CheckpointError(f"{root} is a pickle file, which slimrt never loads (it can run arbitrary code); "
                                  "a slimrt checkpoint is a directory written by slimrt.save")
        raise CheckpointError(f"{root} is a file; a slimrt checkpoint is a directory written by slimrt.save")
    names = sorted(os.listdir(root))
    pickles = [n for n in names if n.lower().endswith(fmt.PICKLE_SUFFIXES)]
    if pickles:
        raise CheckpointError(f"{os.path.join(root, pickles[0])} is a pickle file, which slimrt never loads; "
                              "a slimrt checkpoint holds no pickle")
    if fmt.META_NAME not in names:
        hint = " (it looks like a Hugging Face model directory: compress it first)" if "config.json" in names else ""
        raise CheckpointError(f"{root} has no {fmt.META_NAME}, so it is not a slimrt checkpoint{hint}")
    return root


def _resolve(root: str, name: str) -> str:
    """The real path of a listed file, which must be a regular file inside ``root``."""
    path = os.path.join(root, *name.split("/"))
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise CheckpointError(f"{name} in {root} is a symlink pointing outside the checkpoint directory")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise CheckpointError(f"{name} is missing from {root}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{name} in {root} is not a regular file")
    return real


def read_file(root: str, name: str, cap: int) -> bytes:
    path = _resolve(root, name)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > cap:
            raise CheckpointError(f"{name} in {root} is {size} bytes, over the {cap}-byte cap for this file")
        data = f.read(size + 1)
    if len(data) != size:
        raise CheckpointError(f"{name} in {root} changed size while it was being read")
    return data


def read_model_tensors(root: str, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """model.safetensors, validated, checksummed and entropy-decoded."""
    tensors, digest = read_tensors(_resolve(root, fmt.TENSORS_NAME), fmt.TENSORS_NAME)
    if digest != meta["files"][fmt.TENSORS_NAME]:
        raise CheckpointError(f"{fmt.TENSORS_NAME} in {root}: sha256 checksum mismatch (corrupt or modified file)")
    for name, spec in sorted((meta.get("encoded") or {}).items()):
        tensors[name] = _decode(name, tensors.get(name), spec)
    return tensors


def _decode(name: str, stored: torch.Tensor | None, spec: dict[str, Any]) -> torch.Tensor:
    import zstandard

    from slimrt.checkpoint.safetensors import DTYPES

    where = f"{fmt.TENSORS_NAME}: encoded tensor {name!r}"
    if stored is None:
        raise CheckpointError(f"{where} is listed in {fmt.META_NAME} but not stored")
    if stored.dtype != torch.uint8 or stored.dim() != 1:
        raise CheckpointError(f"{where} must be stored as a 1-D uint8 tensor, got {stored.dtype} {list(stored.shape)}")
    dtype = {str(v).replace("torch.", ""): v for v in DTYPES.values()}.get(spec["dtype"])
    if dtype is None:
        raise CheckpointError(f"{fmt.META_NAME}: field 'encoded.{name}.dtype' is {spec['dtype']!r}, not a known dtype")
    expected = dtype.itemsize
    for d in spec["shape"]:
        expected *= d
    data = stored.numpy().tobytes()
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CheckpointError(f"{where} is not a zstd frame ({e})") from None
    if declared != expected:  # checked before decompressing: a hostile frame could claim terabytes
        raise CheckpointError(f"{where} decodes to {declared} bytes but shape {spec['shape']} x "
                              f"{spec['dtype']} needs {expected}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
    except zstandard.ZstdError as e:
        raise CheckpointError(f"{where} is corrupt: {e}") from None
    if len(raw) != expected:
        raise CheckpointError(f"{where} decoded to {len(raw)} bytes, expected {expected}")
    out = torch.empty(expected, dtype=torch.uint8)
    out.numpy()[:] = memoryview(raw)
    if dtype == torch.bool and expected and int(out.max()) > 1:
        raise CheckpointError(f"{where} is a bool tensor holding bytes other than 0 and 1")
    return out.view(dtype).reshape(spec["shape"])


def _owner(name: str, slim: dict[str, nn.Module]) -> str | None:
    for s in slim:
        if name.startswith(s + "."):
            return s
    return None


def _swap_modules(model: nn.Module, modules: dict[str, Any]) -> dict[str, nn.Module]:
    from slimrt.nn import MODULE_TYPES

    swapped: dict[str, nn.Module] = {}
    for name in sorted(modules):
        entry = modules[name]
        if any(name.startswith(s + ".") or s.startswith(name + ".") for s in swapped):
            raise CheckpointError(f"{fmt.META_NAME}: module '{name}' is nested inside another slimrt module")
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            parent = None
        if parent is None or leaf not in parent._modules:
            raise CheckpointError(f"{fmt.META_NAME}: module '{name}' does not exist in the {type(model).__name__} "
                                  "skeleton")
        cls = MODULE_TYPES[entry["type"]]
        try:
            new = cls.from_slimrt_config(dict(entry["config"]), device="meta")
        except Exception as e:  # hostile configs land here: the constructor rejects them, we name the layer
            raise CheckpointError(f"{fmt.META_NAME}: field 'modules.{name}.config' does not build a "
                                  f"{entry['type']}: {type(e).__name__}: {e}") from None
        old = parent._modules[leaf]
        for attr in ("in_features", "out_features"):  # the layer it replaces fixes its interface
            a, b = getattr(old, attr, None), getattr(new, attr, None)
            if isinstance(a, int) and isinstance(b, int) and a != b:
                raise CheckpointError(f"{fmt.META_NAME}: field 'modules.{name}.config' gives {attr}={b} but the "
                                      f"model's layer '{name}' has {attr}={a}")
        setattr(parent, leaf, new)
        swapped[name] = new
    from slimrt.checkpoint.skeleton import SlimrtPlaceholder

    for name, mod in model.named_modules():
        if isinstance(mod, SlimrtPlaceholder):
            raise CheckpointError(f"{fmt.META_NAME}: layer '{name}' is marked slimrt but no entry under 'modules' "
                                  "names it")
    return swapped


def _check_values(name: str, t: torch.Tensor, positive: bool) -> None:
    """A slimrt module's float tensors feed kernels as they are: NaN/Inf in any of them is corrupt, and
    those it divides or multiplies outputs by (scales, the smoothing vector) must also be > 0."""
    if not t.is_floating_point() or t.numel() == 0:
        return
    bad = ~(torch.isfinite(t) & (t > 0)) if positive else ~torch.isfinite(t)
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        what = f"scale tensor {name!r} has {int(bad.sum())} NaN/Inf/zero/negative" if positive else \
            f"tensor {name!r} has {int(bad.sum())} NaN/Inf"
        raise CheckpointError(f"{fmt.TENSORS_NAME}: {what} values (first at flat index {i}: "
                              f"{t.reshape(-1)[i].item()})")


def _check_against_skeleton(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                            aliases: dict[str, str], slim: dict[str, nn.Module]) -> None:
    for name in sorted(tensors):
        if name not in expected:
            raise CheckpointError(f"{fmt.TENSORS_NAME}: unexpected tensor {name!r}, which the model does not have")
        if name in aliases:
            raise CheckpointError(f"{fmt.TENSORS_NAME}: tensor {name!r} is stored but also listed as tied to "
                                  f"{aliases[name]!r}")
    for alias, source in sorted(aliases.items()):
        if alias not in expected or source not in tensors:
            raise CheckpointError(f"{fmt.META_NAME}: field 'tied' pairs {source!r} and {alias!r}, but the first "
                                  "must be a stored tensor and the second a tensor of the model")
    for name in sorted(expected):
        want = expected[name]
        got = tensors.get(name if name not in aliases else aliases[name])
        if got is None:
            raise CheckpointError(f"{fmt.TENSORS_NAME}: missing tensor {name!r} (refusing to keep it uninitialised)")
        owner = _owner(name, slim)
        layer = f"layer '{owner}' ({type(slim[owner]).__name__})" if owner else "the model"
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{fmt.TENSORS_NAME}: tensor {name!r} has shape {list(got.shape)} but {layer} "
                                  f"expects {list(want.shape)}")
        # slimrt modules' tensors feed kernels: exact dtype. Dense float tensors may differ in float
        # dtype from the skeleton's guess (mixed-precision models, buffers cast by .to()).
        same = got.dtype == want.dtype or (owner is None and got.is_floating_point() and want.is_floating_point())
        if not same:
            raise CheckpointError(f"{fmt.TENSORS_NAME}: tensor {name!r} has dtype {DTYPE_NAMES.get(got.dtype)} but "
                                  f"{layer} expects {DTYPE_NAMES.get(want.dtype, want.dtype)}")
        if owner is not None:
            leaf = name.rpartition(".")[2]  # a module names the tensors it divides or multiplies by
            _check_values(name, got, leaf in getattr(slim[owner], "POSITIVE_TENSORS", ()) or "scale" in leaf)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    if leaf in mod._parameters:
        mod._parameters[leaf] = value
    else:
        mod._buffers[leaf] = value


def assemble(meta: dict[str, Any], tensors: dict[str, torch.Tensor],
             model: nn.Module | None, thin: bool = False) -> tuple[nn.Module, Any]:
    """Skeleton (given, thin or rebuilt) + slimrt modules + validated tensors -> a loaded model."""
    from slimrt.checkpoint import thin as thin_skeleton
    from slimrt.checkpoint.skeleton import SlimrtPlaceholder, build_skeleton, check_attention

    config = None
    if model is None and thin:
        model = thin_skeleton.build(meta["model"], tensors, meta["modules"], list(meta.get("buffers") or []),
                                    SlimrtPlaceholder, meta.get("tied") or [])
        if model is not None:
            config = model.config
            check_attention(meta["model"]["config"].get("slimrt_attention"))
    if model is None:
        model, config = build_skeleton(meta["model"], len(tensors))
    elif not isinstance(model, nn.Module):
        raise TypeError(f"load: model must be an nn.Module skeleton, got {type(model).__name__}")
    else:
        config = getattr(model, "config", None)
    slim = _swap_modules(model, meta["modules"])
    persistent = model.state_dict(keep_vars=True)
    buffers = dict(nonpersistent_buffers(model, slim))
    listed = set(meta.get("buffers") or [])
    for name in sorted(set(buffers) ^ listed):
        raise CheckpointError(f"{fmt.META_NAME}: field 'buffers' and the model disagree on non-persistent buffer "
                              f"{name!r}")
    expected = {**persistent, **buffers}
    aliases = {alias: source for source, alias in meta.get("tied") or []}
    _check_against_skeleton(tensors, expected, aliases, slim)

    # Everything is checked: assign. assign=True keeps the loaded storage (no copy into meta tensors).
    state = {n: tensors[aliases.get(n, n)] for n in persistent}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{fmt.TENSORS_NAME}: the tensors do not load into the model: {e}") from None
    for name in buffers:
        _set_tensor(model, name, tensors[aliases.get(name, name)])
    for alias, source in aliases.items():  # re-tie: the alias becomes the very same Parameter object
        src_mod, _, src_leaf = source.rpartition(".")
        src = model.get_submodule(src_mod)
        _set_tensor(model, alias, src._parameters.get(src_leaf, src._buffers.get(src_leaf)))
    for name, mod in model.named_modules():
        # Rebuild derived state (packed weights): Int8Linear does it in its load_state_dict post hook;
        # modules without such a hook, or still holding meta buffers, are repacked here.
        if callable(getattr(mod, "repack", None)) and (not mod._load_state_dict_post_hooks
                                                       or any(b.device.type == "meta" for b in mod.buffers())):
            mod.repack()
        check = getattr(mod, "slimrt_validate", None)  # module-specific invariants (e.g. sparse layouts)
        if callable(check):
            try:
                check()
            except ValueError as e:
                raise CheckpointError(f"{fmt.TENSORS_NAME}: layer '{name}' ({type(mod).__name__}) is invalid: {e}") \
                    from None
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta":
            raise CheckpointError(f"{fmt.TENSORS_NAME}: tensor {name!r} was not materialised by the checkpoint")
    return model, config
