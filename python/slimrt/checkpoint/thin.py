"""Thin skeletons: a checkpoint's model rebuilt from plain torch modules, without transformers.

slimrt's lean forwards (slimrt/models) read a model's weights and a few config values; they never run
the Hugging Face forward. For the families they cover, importing transformers' modeling code only to
build an empty model costs seconds (all-MiniLM-L6-v2: 7.9 of 8.3 s of `slimrt embed`). Here the module
tree is built from the checkpoint itself instead: every stored tensor names its module
(``encoder.layer.3.output.dense.weight``), a per-family table says what kind of layer a name is
(embedding, norm, linear, GPT-2's Conv1D) and which activation its block calls, the tensor fixes the
layer's shape, and the config (a plain attribute view of ``model.config`` in slimrt.json) supplies
epsilons and head counts. The result has exactly the parameter and buffer names of the transformers
model, so the loader's checks and assignment are the same; the per-family ``required`` names make a
checkpoint that lacks a layer an error, as it is for the transformers skeleton.

Anything outside the table (another architecture, an unknown activation or rope type) returns None
and the loader builds the transformers skeleton as before.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt.checkpoint import hf_config
from slimrt.errors import CheckpointError


class ThinConfig(SimpleNamespace):
    """The model config as plain attributes (what the lean forwards read); ``to_dict`` for callers."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class ThinModel(nn.Module):
    """The root of a thin skeleton: its children are the stored modules; ``config`` and
    ``generation_config`` are plain attribute views of slimrt.json."""

    def __init__(self, config: ThinConfig, generation_config: SimpleNamespace | None, architecture: str,
                 section: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.generation_config = generation_config
        self.architecture = architecture
        # The "model" section it was built from: slimrt.save writes it back (kind "hf"), so a thin
        # model saves to a checkpoint that loads like the one it came from.
        self.slimrt_section = copy.deepcopy(dict(section)) if section is not None else None

    def model_section(self) -> dict[str, Any]:
        """The "model" section of slimrt.json for saving this model (config edits included)."""
        if self.slimrt_section is None:
            raise ValueError("save: this thin model has no checkpoint section to write back")
        section = copy.deepcopy(self.slimrt_section)
        section["config"] = {**section.get("config", {}), **copy.deepcopy(self.config.to_dict())}
        return section

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"this is slimrt's thin {self.architecture} (weights only, for slimrt.Runner); load the "
                        "checkpoint with thin=False for the Hugging Face model and its forward")


# ---- activations, as transformers computes them (the decode step recognises them by class name) ----

class GELUActivation(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class NewGELUActivation(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GELUTanh(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": GELUActivation, "gelu_new": NewGELUActivation, "gelu_pytorch_tanh": GELUTanh, "silu": nn.SiLU,
    "swish": nn.SiLU, "relu": nn.ReLU,
}


class Conv1D(nn.Module):
    """GPT-2's Conv1D as transformers defines it: weight (K, N), y = x @ W + b."""

    def __init__(self, nf: int, nx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(nf, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class RMSNorm(nn.Module):
    """Llama-family RMSNorm's stored state (weight) and its epsilon under transformers' name."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dtype=dtype))
        self.variance_epsilon = eps


# ---- the families -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    # (pattern over a module name, layer kind): first match wins; kinds: embedding, layernorm, rmsnorm,
    # linear, conv1d. A stored module that no pattern matches makes the checkpoint ineligible.
    layers: tuple[tuple[str, str], ...]
    eps: str  # config key of the norms' epsilon
    act_key: str  # config key of the MLP activation name
    act_at: tuple[str, str]  # (pattern of the block that calls it, attribute name)
    required: tuple[str, ...]  # module names every checkpoint of the family has ({i}: each layer)
    layer_count: str  # config key of the number of layers
    check: Callable[[ThinConfig], str | None] = lambda cfg: None  # a reason it cannot be thin, or None


def _llama_check(cfg: ThinConfig) -> str | None:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if not isinstance(params, dict):  # the transformers skeleton's checks name it (hf_config)
        return "rope parameters that are not an object"
    kind = params.get("rope_type", params.get("type", "default"))
    return None if kind == "default" else f"rope_type {kind!r} is computed by transformers"


_LLAMA = Family(
    layers=((r"embed_tokens$", "embedding"), (r"(norm|layernorm)$", "rmsnorm"), (r"", "linear")),
    eps="rms_norm_eps", act_key="hidden_act", act_at=(r"\.mlp$", "act_fn"),
    required=("model.embed_tokens", "model.norm", "lm_head", "model.layers.{i}.input_layernorm",
              "model.layers.{i}.post_attention_layernorm", "model.layers.{i}.self_attn.q_proj",
              "model.layers.{i}.self_attn.k_proj", "model.layers.{i}.self_attn.v_proj",
              "model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp.gate_proj",
              "model.layers.{i}.mlp.up_proj", "model.layers.{i}.mlp.down_proj"),
    layer_count="num_hidden_layers", check=_llama_check)

_BERT = Family(
    layers=((r"_embeddings$", "embedding"), (r"LayerNorm$", "layernorm"), (r"", "linear")),
    eps="layer_norm_eps", act_key="hidden_act", act_at=(r"\.intermediate$", "intermediate_act_fn"),
    required=("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings",
              "embeddings.LayerNorm", "encoder.layer.{i}.attention.self.query", "encoder.layer.{i}.attention.self.key",
              "encoder.layer.{i}.attention.self.value", "encoder.layer.{i}.attention.output.dense",
              "encoder.layer.{i}.attention.output.LayerNorm", "encoder.layer.{i}.intermediate.dense",
              "encoder.layer.{i}.output.dense", "encoder.layer.{i}.output.LayerNorm"),
    layer_count="num_hidden_layers",
    check=lambda cfg: None if getattr(cfg, "position_embedding_type", "absolute") == "absolute"
    else "position_embedding_type is not absolute")

_GPT2 = Family(
    layers=((r"\.(wte|wpe)$", "embedding"), (r"\.ln_(1|2|f)$", "layernorm"), (r"^lm_head$", "linear"),
            (r"\.(c_attn|c_proj|c_fc)$", "conv1d")),
    eps="layer_norm_epsilon", act_key="activation_function", act_at=(r"\.mlp$", "act"),
    required=("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head", "transformer.h.{i}.ln_1",
              "transformer.h.{i}.ln_2", "transformer.h.{i}.attn.c_attn", "transformer.h.{i}.attn.c_proj",
              "transformer.h.{i}.mlp.c_fc", "transformer.h.{i}.mlp.c_proj"),
    layer_count="n_layer")

# The model_type transformers gives each architecture's config (hf_config checks the stored one).
MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
               "Qwen3ForCausalLM": "qwen3", "BertModel": "bert", "GPT2LMHeadModel": "gpt2"}

FAMILIES: dict[str, Family] = {"LlamaForCausalLM": _LLAMA, "MistralForCausalLM": _LLAMA, "Qwen2ForCausalLM": _LLAMA,
                               "Qwen3ForCausalLM": _LLAMA, "BertModel": _BERT, "GPT2LMHeadModel": _GPT2}


def eligible(section: Mapping[str, Any]) -> str | None:
    """None if ``section`` (slimrt.json "model") can be built thin, else the reason it cannot."""
    if section.get("kind") != "hf":
        return f"model kind {section.get('kind')!r}"
    family = FAMILIES.get(section.get("architecture"))  # type: ignore[arg-type]
    if family is None:
        return f"architecture {section.get('architecture')!r} has no thin skeleton"
    cfg = section.get("config")
    if not isinstance(cfg, dict):
        return "no config"
    config = ThinConfig(**{k: v for k, v in cfg.items() if isinstance(k, str) and k.isidentifier()})
    act = getattr(config, family.act_key, None)
    if not isinstance(act, str) or act not in ACTIVATIONS:  # (a list is unhashable: not a TypeError here)
        return f"activation {getattr(config, family.act_key, None)!r}"
    return family.check(config)


def build(section: Mapping[str, Any], tensors: Mapping[str, Tensor], modules: Mapping[str, Any],
          buffers: list[str], placeholder: Callable[[], nn.Module],
          tied: list[list[str]] | None = None) -> nn.Module | None:
    """The thin skeleton (meta device) for a validated "model" section and the checkpoint's tensors,
    or None when the family is not covered (the caller builds the transformers skeleton).
    ``modules``: slimrt module names (each gets ``placeholder()``, swapped by the loader); ``tied``:
    [stored, alias] pairs (an alias is a layer too, e.g. a tied lm_head, shaped like its source)."""
    if eligible(section) is not None:
        return None
    tensors = dict(tensors)
    for source, alias in tied or []:
        if source in tensors:
            tensors.setdefault(alias, tensors[source])
    arch = section["architecture"]
    family = FAMILIES[arch]
    # The checks the transformers skeleton gets (skeleton._build_hf), with the names this table runs:
    # an eligible config uses only these activations, and a thin BERT only absolute positions.
    hf_config.check(section["config"], MODEL_TYPES[arch], activations=ACTIVATIONS, position_types=("absolute",))
    cfg = ThinConfig(**{k: v for k, v in section["config"].items() if isinstance(k, str) and k.isidentifier()})
    gen = section.get("generation_config")
    root = ThinModel(cfg, SimpleNamespace(**gen) if isinstance(gen, dict) else None, arch, section)
    eps = getattr(cfg, family.eps, None)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise CheckpointError(f"slimrt.json: field 'model.config.{family.eps}' must be a positive number, got {eps!r}")
    n_layers = getattr(cfg, family.layer_count, None)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 0 < n_layers <= len(tensors):
        raise CheckpointError(f"slimrt.json: field 'model.config.{family.layer_count}' must be a layer count the "
                              f"{len(tensors)} stored tensors can fill, got {n_layers!r}")

    # module name -> {leaf: tensor}, for every stored tensor outside the slimrt modules
    owned: dict[str, dict[str, Tensor]] = {}
    for name, t in tensors.items():
        if any(name.startswith(m + ".") for m in modules):
            continue
        mod, _, leaf = name.rpartition(".")
        owned.setdefault(mod, {})[leaf] = t
    buffer_set = set(buffers)
    # Natural order (layer 2 before layer 10): ModuleList children must arrive by index.
    for mod_name in sorted(set(owned) | set(modules), key=_natural):
        if mod_name in modules:
            _place(root, mod_name, placeholder())
            continue
        leaves = owned[mod_name]
        params = {leaf: t for leaf, t in leaves.items() if f"{mod_name}.{leaf}" not in buffer_set}
        bufs = {leaf: t for leaf, t in leaves.items() if f"{mod_name}.{leaf}" in buffer_set}
        if params:
            _place(root, mod_name, _layer(arch, family, mod_name, params, float(eps)))
        for leaf, t in bufs.items():  # non-persistent buffers (position ids, rope tables) on their module
            _container(root, mod_name).register_buffer(leaf, torch.empty(t.shape, dtype=t.dtype, device="meta"),
                                                       persistent=False)
    make_act = ACTIVATIONS[getattr(cfg, family.act_key)]
    pattern, attr = family.act_at
    for name, mod in list(root.named_modules()):
        if name and re.search(pattern, name):
            setattr(mod, attr, make_act())
    have = {name for name, _ in root.named_modules()}
    for i in range(n_layers):
        for req in family.required:
            name = req.format(i=i)
            if name not in have:
                raise CheckpointError(f"model.safetensors: no tensors for {name!r}, which a {arch} with "
                                      f"{n_layers} layers has (a truncated or mismatched checkpoint)")
    return root


def _natural(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _layer(arch: str, family: Family, name: str, params: dict[str, Tensor], eps: float) -> nn.Module:
    kind = next((k for p, k in family.layers if re.search(p, name)), None)
    w = params.get("weight")
    extra = sorted(set(params) - {"weight", "bias"})
    if kind is None or w is None or extra:
        raise CheckpointError(f"model.safetensors: tensors {sorted(params)} of {name!r} are not a layer a "
                              f"{arch} has")
    floats = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    bad = sorted(leaf for leaf, t in params.items() if t.dtype not in floats)
    if bad:  # nn.Module parameters must be float (torch refuses an integer Parameter with a RuntimeError)
        raise CheckpointError(f"model.safetensors: {name}.{bad[0]} is {str(params[bad[0]].dtype).replace('torch.', '')}"
                              f"; a {arch}'s dense layers hold float tensors")
    dt, bias = w.dtype, "bias" in params
    with torch.device("meta"):
        if kind == "embedding" and w.dim() == 2 and not bias:
            # _weight: no random init (on the meta device torch's normal_ would import torch._dynamo: 2.6 s)
            return nn.Embedding(w.shape[0], w.shape[1], _weight=torch.empty(w.shape, dtype=dt))
        if kind == "layernorm" and w.dim() == 1:
            return nn.LayerNorm(w.shape[0], eps=eps, bias=bias, dtype=dt)
        if kind == "rmsnorm" and w.dim() == 1 and not bias:
            return RMSNorm(w.shape[0], eps, dt)
        if kind == "linear" and w.dim() == 2:
            return nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=dt)
        if kind == "conv1d" and w.dim() == 2 and bias:
            return Conv1D(w.shape[1], w.shape[0], dt)
    raise CheckpointError(f"model.safetensors: {name!r} holds {sorted(params)} of shape {tuple(w.shape)}, which "
                          f"is not a {kind}")


def _container(root: nn.Module, name: str) -> nn.Module:
    """The module at ``name``, creating empty containers (ModuleList for numeric children) on the way."""
    mod = root
    if not name:
        return mod
    parts = name.split(".")
    for i, part in enumerate(parts):
        child = mod._modules.get(part)
        if child is None:
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            child = nn.ModuleList() if nxt is not None and nxt.isdigit() else nn.Module()
            _add_child(mod, part, child)
        mod = child
    return mod


def _add_child(parent: nn.Module, part: str, child: nn.Module) -> None:
    if isinstance(parent, nn.ModuleList):
        if not part.isdigit() or int(part) != len(parent):
            raise CheckpointError(f"model.safetensors: layer index {part} is out of order or skips a layer")
        parent.append(child)
    else:
        try:  # torch refuses "", a dotted name and one that shadows an attribute ("training", "forward")
            parent.add_module(part, child)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"model.safetensors: a tensor name has the module part {part!r}, which is not "
                                  f"a module name ({e.args[0] if e.args else e})") from None


def _place(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = _container(root, parent_name)
    if leaf in parent._modules:
        raise CheckpointError(f"model.safetensors: {name!r} is stored twice (as tensors and as a slimrt module)")
    _add_child(parent, leaf, module)
