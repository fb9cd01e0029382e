"""slimrt: a runtime for compressed transformer models.

Importing slimrt registers its ops (``torch.ops.slimrt.*``) and loads neither Triton nor
transformers; those load at the use site that needs them.
"""

from slimrt._version import __version__
from slimrt._info import info
from slimrt import ops, nn
from slimrt import attention  # block-sparse attention masks (imports only torch)
from slimrt.attention import BlockMask

__all__ = ["__version__", "info", "ops", "nn", "compress", "report", "Recipe", "Runner", "load",
           "save", "CheckpointError", "SlimrtError"]

# ---- compressor ----
# Imported eagerly on purpose: `slimrt.compress` is both a subpackage and the function, and a lazy
# export would be shadowed by the subpackage as soon as anything imported slimrt.compress.<module>.
# It imports neither transformers nor tqdm at this point (both load at their use sites).
from slimrt.compress import compress, report  # noqa: E402
from slimrt.recipe import Recipe  # noqa: E402

# ---- runner ----: slimrt.load(path) -> Runner
from slimrt.runner import Runner, load  # noqa: E402

# ---- checkpoints ----: save/load_model need torch + safetensors; transformers loads only for HF models
from slimrt.errors import CheckpointError, SlimrtError  # noqa: E402
from slimrt.checkpoint import save  # noqa: E402

__all__ += ["attention", "BlockMask"]

# ---- quality (issue 8) ----: slimrt.evaluate(compressed, reference, data) -> dict; slimrt.distill(...)
# Eager like compress (the function shadows its module); both import only torch at this point.
from slimrt.evaluate import evaluate, QualityGateError  # noqa: E402

__all__ += ["evaluate", "QualityGateError"]
from slimrt.distill import distill  # noqa: E402

__all__ += ["distill"]
