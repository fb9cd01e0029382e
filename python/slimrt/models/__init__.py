"""One lean forward per model family, picked from the model config's ``model_type``."""

from __future__ import annotations

from torch import nn

from slimrt.models import bert, gpt2, llama
from slimrt.models._common import make_linear
from slimrt.models.policy import KernelPolicy, tune

FAMILIES = {
    **{t: llama.LlamaLean for t in llama.MODEL_TYPES},
    **{t: gpt2.GPT2Lean for t in gpt2.MODEL_TYPES},
    **{t: bert.BertLean for t in bert.MODEL_TYPES},
}


def build(model: nn.Module, policy: KernelPolicy | None = None):
    """The lean forward for ``model`` (LlamaLean, GPT2Lean or BertLean); ValueError if unsupported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"Runner: model_type={model_type!r} is not supported; "
                         f"supported: {', '.join(sorted(FAMILIES))}")
    if model_type in ("llama", "mistral", "qwen2", "qwen3") and not hasattr(model, "lm_head"):
        raise ValueError(f"Runner: a {model_type} model needs its LM head (a *ForCausalLM class), "
                         f"got {type(model).__name__}")
    if model_type == "gpt2" and not hasattr(model, "lm_head"):
        raise ValueError(f"Runner: a GPT-2 model needs its LM head (GPT2LMHeadModel), got {type(model).__name__}")
    return FAMILIES[model_type](model, policy or KernelPolicy())


__all__ = ["FAMILIES", "KernelPolicy", "build", "make_linear", "tune"]
