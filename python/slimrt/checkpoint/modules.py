"""The parts of a model a checkpoint treats apart from its plain tensors.

slimrt modules (instances of a class in ``slimrt.nn.MODULE_TYPES``) are stored with their type and
config and rebuilt from them; non-persistent buffers outside them (e.g. rotary inv_freq), which
``state_dict`` leaves out, are stored and restored by name. Used by both the writer and the loader.
"""

from __future__ import annotations

import torch
from torch import nn


def slimrt_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Top-most submodules that are slimrt modules (instances of a class in nn.MODULE_TYPES)."""
    from slimrt.nn import MODULE_TYPES

    types = tuple(MODULE_TYPES.values())
    found: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, types) and not any(name.startswith(p + ".") for p in found):
            if name == "":
                raise ValueError("save: the model itself is a slimrt module; wrap it (e.g. in nn.Sequential)")
            found[name] = mod
    return found


def type_name(mod: nn.Module) -> str:
    """The MODULE_TYPES key of a slimrt module (its "type" in slimrt.json)."""
    from slimrt.nn import MODULE_TYPES

    for name, cls in MODULE_TYPES.items():
        if type(mod) is cls:
            return name
    raise TypeError(f"save: {type(mod).__name__} subclasses a slimrt module but is not in nn.MODULE_TYPES")


def nonpersistent_buffers(model: nn.Module, slim: dict[str, nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """Non-persistent buffers outside slimrt modules (whose own are rebuilt by repack())."""
    out = []
    for mname, mod in model.named_modules(remove_duplicate=False):
        if any(mname == s or mname.startswith(s + ".") for s in slim):
            continue
        for bname in sorted(mod._non_persistent_buffers_set):
            t = mod._buffers.get(bname)
            if t is not None:
                out.append((f"{mname}.{bname}" if mname else bname, t))
    return out
