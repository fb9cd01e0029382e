"""slimrt: a runtime for compressed transformer models.

Importing slimrt registers its ops (``torch.ops.slimrt.*``) and loads neither Triton nor
transformers; those load at the use site that needs them.
"""

from slimrt._version import __version__
from slimrt._info import info
from slimrt import ops, nn

__all__ = ["__version__", "info", "ops", "nn"]

# Checkpoints (save/load_model are light: torch + safetensors; transformers loads only for HF models).
from slimrt.errors import CheckpointError, SlimrtError
from slimrt.checkpoint import save

__all__ += ["CheckpointError", "SlimrtError", "save"]
