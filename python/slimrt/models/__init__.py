"""One lean forward per model family, picked from the model config's ``model_type``; the generic
path (models/generic.py: the model's own forward) for everything else."""

from __future__ import annotations

from typing import Any

from torch import nn

from slimrt.models import bert, generic, gpt2, llama
from slimrt.models._common import make_linear
from slimrt.models.policy import KernelPolicy, tune

FAMILIES = {
    **{t: llama.LlamaLean for t in llama.MODEL_TYPES},
    **{t: gpt2.GPT2Lean for t in gpt2.MODEL_TYPES},
    **{t: bert.BertLean for t in bert.MODEL_TYPES},
}
# model_type -> the attribute a decoder family's lean forward needs (its LM head) and the class to name.
_NEEDS_HEAD = {**{t: "a *ForCausalLM class" for t in llama.MODEL_TYPES}, "gpt2": "GPT2LMHeadModel"}


class NeedsModelForward(ValueError):
    """The lean forwards do not cover this model and it has no forward of its own to run instead
    (a thin, weights-only skeleton): load it with the Hugging Face skeleton (thin=False)."""


def build(model: nn.Module, policy: KernelPolicy | None = None):
    """The lean forward for ``model`` (LlamaLean, GPT2Lean, BertLean, ...); ValueError if unsupported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"Runner: model_type={model_type!r} has no lean forward")
    if model_type in _NEEDS_HEAD and not hasattr(model, "lm_head"):
        raise ValueError(f"Runner: a {model_type} model needs its LM head ({_NEEDS_HEAD[model_type]}), "
                         f"got {type(model).__name__}")
    return FAMILIES[model_type](model, policy or KernelPolicy())


def select(model: nn.Module, policy: KernelPolicy | None = None, generic_only: bool = False) -> tuple[Any, str]:
    """(forward, why): the lean forward where one covers the model, else the generic path (the model's
    own forward, slimrt modules inside); ``why`` is one phrase for ``Runner.path_reason``.
    ``generic_only``: the generic path even where a lean forward exists (to compare them)."""
    from slimrt.checkpoint.thin import ThinModel

    try:
        if generic_only:
            raise ValueError("Runner: the generic path was asked for (generic=True)")
        lean = build(model, policy)
        return lean, f"slimrt's lean {model.config.model_type} forward"
    except ValueError as e:
        reason = str(e).removeprefix("Runner: ")
        if isinstance(model, ThinModel):
            raise NeedsModelForward(reason) from None
    if getattr(model, "config", None) is None:
        return generic.build(model, "not a Hugging Face model"), f"{type(model).__name__} is not a Hugging Face model"
    if getattr(model.config, "slimrt_attention", None) is not None:  # the pattern needs a lean forward
        raise ValueError(f"Runner: config.slimrt_attention (sliding-window attention) runs in the lean decoder "
                         f"forwards only; {reason}")
    return generic.build(model, reason), f"the model's own forward ({reason})"


__all__ = ["FAMILIES", "KernelPolicy", "NeedsModelForward", "build", "make_linear", "select", "tune"]
