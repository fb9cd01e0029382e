"""slimrt.compress(model, recipe, calibration=None, tokenizer=None) -> model, in place.

One generic mechanism (swap.py: a walk over named_modules() with one handler per method) and one
file per method (int8.py: "w8a8", "w8"; lowrank.py; prune.py; sparse_attention.py). Adding a method
= one file that calls ``swap.register(Method(...))`` (and ``slimrt.recipe.register_preset`` for its
presets) + one import line below. The registries themselves live in slimrt.recipe, so that recipes
are checked without importing the compressor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from slimrt.compress import int8  # noqa: F401  (registers "w8a8" and "w8")
from slimrt.compress import lowrank  # noqa: F401  (registers "lowrank")
from slimrt.compress import prune  # noqa: F401  (registers "prune_heads" and "prune_ffn")
from slimrt.compress import sparse_attention  # noqa: F401  (registers "sparse_attention", model-level)
from slimrt.compress.report import report
from slimrt.compress.swap import METHODS, Fallback, Method, model_size, register

if TYPE_CHECKING:
    from slimrt.recipe import Recipe


def compress(model: nn.Module, recipe: "Recipe | str | os.PathLike | Mapping[str, Any]",
             calibration: Iterable[Any] | None = None, tokenizer: Any = None, progress: bool = True) -> nn.Module:
    """Compresses ``model`` in place following ``recipe`` and returns it.

    recipe: a preset name ("w8a8", "w8", ...), a slimrt.Recipe, a dict, or a path to a JSON file.
    calibration: an iterable of batches (token id tensors, dicts of tensors, or strings, which need
    ``tokenizer``); required when the recipe uses SmoothQuant. Works on any nn.Module: nn.Linear and
    transformers' Conv1D layers selected by the recipe are swapped for slimrt modules.
    Afterwards ``model.slimrt_meta`` = {"recipe", "layers", "fallbacks", "totals"} (+ "model_methods"
    for model-level methods such as sparse_attention; JSON-able; the
    checkpoint stores it) and ``slimrt.report(model)`` is the per-layer table.
    """
    import torch

    from slimrt.compress.swap import swap
    from slimrt.recipe import Recipe, resolve

    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, "slimrt_meta", None) is not None:
        raise ValueError("compress: this model was already compressed by slimrt; start from the dense model and "
                         "list every method in one recipe (e.g. methods=['lowrank', 'w8'])")
    recipe = resolve(recipe)
    assert isinstance(recipe, Recipe)
    params_before, bytes_before = model_size(model)
    with torch.no_grad():
        model_rows: list[dict] = []
        rows, fallbacks = swap(model, recipe, calibration, tokenizer, progress=progress, model_rows=model_rows)
    params_after, bytes_after = model_size(model)
    model.slimrt_meta = {
        "recipe": recipe.to_dict(),
        "layers": rows,
        "fallbacks": fallbacks,
        **({"model_methods": model_rows} if model_rows else {}),
        "totals": {"params_before": params_before, "params_after": params_after,
                   "bytes_before": bytes_before, "bytes_after": bytes_after},
    }
    return model


__all__ = ["compress", "report", "METHODS", "Method", "Fallback", "register"]
