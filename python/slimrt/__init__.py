"""slimrt: a runtime for compressed transformer models.

The public API, by what it does (docs/architecture.md shows how the package is layered):

  compress     compress(model, recipe), report(model), Recipe
  checkpoints  save(model, path) (a SentenceTransformer too), to_sentence_transformer(path);
               slimrt.checkpoint.load_model / read_metadata
  GGUF input   load_gguf(path) -> (Hugging Face model, tokenizer)
  run          load(path) -> Runner, Runner(model, tokenizer)
  quality      evaluate(compressed, reference), distill(student, teacher)
  trade-offs   sweep(src, recipes): bytes, speed, quality per recipe; from slimrt.sweep import write
  kernels      ops (torch.ops.slimrt.* entry points), nn (Int8Linear, LowRankLinear),
               attention (block-sparse masks), BlockMask
  errors       SlimrtError, CheckpointError, QualityGateError
  this build   info(), __version__

Importing slimrt registers its ops (``torch.ops.slimrt.*``) and loads neither Triton nor
transformers; those load at the use site that needs them. ``compress``, ``evaluate``, ``distill``
and ``sweep`` are imported eagerly on purpose: each is both a submodule and the function exported
here, and a lazy export would be shadowed by the submodule as soon as anything imported it.
"""

from slimrt._version import __version__
from slimrt._info import info

# kernels (importing ops registers them), modules and attention masks
from slimrt import ops, nn
from slimrt import attention
from slimrt.attention import BlockMask

# compress
from slimrt.compress import compress, report
from slimrt.recipe import Recipe

# run
from slimrt.runner import Runner, load

# errors and checkpoints
from slimrt.errors import CheckpointError, SlimrtError
from slimrt.checkpoint import save
from slimrt.checkpoint.sentence import to_sentence_transformer
from slimrt.gguf import GGUFError, load_gguf

# quality
from slimrt.evaluate import evaluate, QualityGateError
from slimrt.distill import distill
from slimrt.sweep import sweep

__all__ = [
    "compress", "report", "Recipe",
    "save", "load_gguf", "to_sentence_transformer",
    "load", "Runner",
    "evaluate", "distill", "sweep",
    "ops", "nn", "attention", "BlockMask",
    "SlimrtError", "CheckpointError", "GGUFError", "QualityGateError",
    "info", "__version__",
]
