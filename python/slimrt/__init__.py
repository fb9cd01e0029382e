"""slimrt: a runtime for compressed transformer models.

Importing slimrt registers its ops (``torch.ops.slimrt.*``) and loads neither Triton nor
transformers; those load at the use site that needs them.
"""

from slimrt._version import __version__
from slimrt._info import info
from slimrt import ops, nn
from slimrt import attention  # block-sparse attention masks (imports only torch)
from slimrt.attention import BlockMask

__all__ = ["__version__", "info", "ops", "nn"]
__all__ += ["attention", "BlockMask"]
