"""slimrt modules: drop-in replacements for nn.Linear that run slimrt ops.

Every module here implements the checkpoint protocol: ``slimrt_config() -> dict`` (JSON-able) and
``from_slimrt_config(cfg, device="meta")``, which rebuilds an empty module whose ``state_dict``
names the exact tensors, shapes and dtypes a checkpoint must hold. ``MODULE_TYPES`` is the
allow-list the loader builds from: a checkpoint can never name any other class.
"""

from torch import nn

from slimrt.nn.int8_linear import Int8Linear
from slimrt.nn.lowrank_linear import LowRankLinear
from slimrt.nn.w4_linear import W4Linear

MODULE_TYPES: dict[str, type[nn.Module]] = {
    "Int8Linear": Int8Linear,
    "LowRankLinear": LowRankLinear,
    "W4Linear": W4Linear,
}

__all__ = ["Int8Linear", "MODULE_TYPES"]
__all__ += ["LowRankLinear", "W4Linear"]
