"""The one generic mechanism: a walk over ``model.named_modules()`` with a handler per method.

A method is a ``Method`` registered in ``METHODS`` (one file + one ``register(...)`` call):

    register(Method(name="w8", group="quantize", accepts=is_linear_like, convert=my_convert))

``swap`` runs the recipe's methods in order. For each method it walks the model's current modules,
keeps those whose name the recipe selects (targets/ignore) and whose type the method ``accepts``,
collects calibration statistics when the method asks for them, and replaces each module by what
``convert`` returns. Because every method walks the model as the previous one left it, methods
combine: a low-rank method that turns ``fc1`` into a module holding two nn.Linear factors
(``fc1.down``, ``fc1.up``) followed by "w8" quantizes both factors.

``convert(name, module, ctx)`` returns ``(new_module, info)`` where info holds at least "kernel"
(the op that will run) and any method-specific JSON-able facts for the report; it raises
``Fallback(reason)`` for a layer it cannot handle (kept dense, recorded with the reason), and
ValueError for bad data (NaN weights), naming the module.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from slimrt import recipe as _recipe

if TYPE_CHECKING:
    from slimrt.recipe import Recipe

log = logging.getLogger("slimrt")


class Fallback(Exception):
    """Raised by a handler for a layer it cannot compress; the layer stays dense, with this reason."""


@dataclass
class Context:
    """What a handler sees besides the module: the recipe, its own params, calibration statistics."""

    recipe: "Recipe"
    params: dict[str, Any]
    # Per module name: max |x| over every calibration token, per input channel, (K,) float32.
    act_amax: dict[str, Tensor] = field(default_factory=dict)
    # Per module name: the modules (itself included) that read the same input tensor in calibration
    # (q/k/v, gate/up), for methods that treat a shared input jointly (SmoothQuant).
    shared_input: dict[str, list[str]] = field(default_factory=dict)
    # For structural methods (pruning), which change several sibling layers and gather their own
    # statistics: the model being compressed, the calibration data (or None), and a scratch dict
    # the method may fill once and reuse across its convert() calls.
    model: nn.Module | None = None
    calibration: Iterable[Any] | None = None
    tokenizer: Any = None
    # Whatever a method's ``prepare`` computed for all its layers at once (e.g. lowrank's model-wide
    # rank plan), keyed by method name.
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One compression method.

    name: the name used in recipes. group: methods of one group exclude each other in a recipe
    (e.g. "w8a8" and "w8" are both "quantize"). params: {param: (type, default, check)} where
    check(value) returns None or a sentence saying what is wrong. accepts(module): whether this
    method applies to a module of this type (others are left alone, not recorded).
    needs_calibration(recipe): whether ``ctx.act_amax`` must be filled before ``convert``.
    """

    name: str
    group: str
    accepts: Callable[[nn.Module], bool]
    convert: Callable[[str, nn.Module, Context], tuple[nn.Module, dict[str, Any]]]
    params: dict[str, tuple[type, Any, Callable[[Any], str | None] | None]] = field(default_factory=dict)
    needs_calibration: Callable[["Recipe"], bool] = lambda recipe: False
    # Whether the method reads calibration data at all with this recipe (needs_calibration, or a
    # prepare step that does, like lowrank's activation-weighted SVD). Without user data, such a
    # recipe runs on slimrt's own text (default_calibration) when a tokenizer is given.
    uses_calibration: Callable[["Recipe"], bool] | None = None
    # Optional: prepare(model, todo, ctx, calibration, tokenizer, progress) runs once before the layers
    # are converted, for methods that decide across layers (lowrank spreads one parameter budget)
    # or need statistics other than act_amax (lowrank's input Gram matrices).
    prepare: Callable[..., None] | None = None
    # Optional, for model-level methods that change no layer (sparse_attention records an attention
    # pattern in the config): apply_model(model, ctx) -> info runs once instead of the layer walk
    # (accepts should then return False). Its info is recorded under slimrt_meta["model_methods"];
    # Fallback(reason) is recorded under fallbacks["(model)"].
    apply_model: Callable[[nn.Module, Context], dict[str, Any]] | None = None


# The registry recipes are checked against; it lives in slimrt.recipe (the same dict) so that the
# recipe need not import the compressor. Only register() adds to it, so every entry is a Method.
METHODS = cast("dict[str, Method]", _recipe.METHODS)


def register(method: Method) -> Method:
    """Adds a compression method; recipes may then name it."""
    if method.name in METHODS:
        raise ValueError(f"compress method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


# ---- Linear-like layers: nn.Linear and transformers' Conv1D (GPT-2), seen in nn.Linear layout ----

def is_conv1d(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D, without importing transformers: an instance of it can only
    exist if transformers already defined the class, so it is in sys.modules."""
    pu = sys.modules.get("transformers.pytorch_utils")
    return pu is not None and isinstance(module, pu.Conv1D)


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_weight(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight (N, K) in nn.Linear layout, bias (N,) or None) of an nn.Linear or a Conv1D.

    Conv1D stores its weight as (K, N) and computes x @ W + b; its transpose is the Linear weight.
    """
    if isinstance(module, nn.Linear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    if is_conv1d(module):
        return module.weight.detach().t(), None if module.bias is None else module.bias.detach()
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def check_finite(name: str, tensor_name: str, t: Tensor) -> None:
    """ValueError naming the module and tensor if t holds NaN or Inf (RELIABILITY.md 18)."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[:3].tolist()
        raise ValueError(f"compress: {name}.{tensor_name} holds NaN or Inf (at indices {bad}); "
                         "fix the model before compressing it")



def quantizable_weight(name: str, module: nn.Module, kernels: str) -> tuple[Tensor, Tensor | None]:
    """linear_weight for a quantizing method: Fallback for what its kernels cannot take (an empty,
    non-float or meta weight), ValueError for NaN or Inf; ``kernels`` names them in the reason."""
    weight, bias = linear_weight(module)  # (N, K), (N,)
    n, k = weight.shape
    if n == 0 or k == 0:
        raise Fallback(f"zero-size weight (N, K) = ({n}, {k})")
    if weight.dtype not in (torch.float32, torch.bfloat16):
        raise Fallback(f"weight dtype {str(weight.dtype).replace('torch.', '')}: the {kernels} kernels take "
                       "float32 or bfloat16 activations")
    if weight.device.type == "meta":
        raise Fallback("weight is on the meta device (not loaded)")
    check_finite(name, "weight", weight)
    if bias is not None:
        check_finite(name, "bias", bias)
    return weight, bias

# ---- sizes ----

def state_size(module: nn.Module) -> tuple[int, int]:
    """(elements, bytes) of a module's persistent state (what a checkpoint holds for it)."""
    numel = nbytes = 0
    for t in module.state_dict(keep_vars=True).values():
        numel += t.numel()
        nbytes += t.numel() * t.element_size()
    return numel, nbytes


def model_size(model: nn.Module) -> tuple[int, int]:
    """(elements, bytes) of a model's persistent state, counting tied (shared) tensors once."""
    seen: set[tuple[int, int, torch.dtype]] = set()
    numel = nbytes = 0
    for t in model.state_dict(keep_vars=True).values():
        key = (t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else (id(t), 0, t.dtype)
        if key in seen:
            continue
        seen.add(key)
        numel += t.numel()
        nbytes += t.numel() * t.element_size()
    return numel, nbytes


# ---- the walk ----

def candidates(model: nn.Module, recipe: "Recipe", method: Method) -> list[tuple[str, nn.Module]]:
    """Modules this method will visit, in named_modules() order; a module shared under several
    names is visited once."""
    out, seen = [], set()
    for name, module in model.named_modules():
        if id(module) in seen or not method.accepts(module) or not recipe.matches(name):
            continue
        seen.add(id(module))
        out.append((name, module))
    return out


def _shared_params(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it is reachable under (more than one name means tied)."""
    names: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(pname)
    return names


def _untie_config(model: nn.Module) -> None:
    """Stops transformers from re-tying an lm_head that is no longer a dense Linear."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False


def _skip_reason(name: str, module: nn.Module, model: nn.Module) -> str | None:
    """Generic reasons a module cannot be swapped, whatever the method."""
    if name == "":
        return "the root module itself cannot be replaced in place; wrap it in an nn.Sequential"
    return None


_CHILD_READ = re.compile(r"\bself\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b(?!\s*\()")
_SELF_CALL = re.compile(r"\bself\.([A-Za-z_]\w*)\s*\(")


@functools.lru_cache(maxsize=None)
def _child_reads(cls: type) -> tuple[tuple[str, str, str], ...]:
    """(child, attribute, method) for every ``self.<child>.<attribute>`` that ``cls.forward`` (and the
    methods of ``cls`` it calls by ``self.<method>(``) reads without calling: a parent that takes a
    child's tensors itself (torch's TransformerEncoderLayer fast path reads ``linear1.weight``,
    MultiheadAttention ``out_proj.weight``) rather than calling the child. Read from the source; a
    class without source (C extensions) reads nothing that can be seen."""
    found: list[tuple[str, str, str]] = []
    todo, seen = ["forward"], set()
    while todo:
        meth = todo.pop()
        fn = getattr(cls, meth, None)
        if meth in seen or not callable(fn) or getattr(nn.Module, meth, None) is fn:
            continue
        seen.add(meth)
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        found += [(child, attr, meth) for child, attr in _CHILD_READ.findall(src)]
        todo += _SELF_CALL.findall(src)
    return tuple(found)


def _has_plain(module: nn.Module, attr: str) -> bool:
    """Whether ``attr`` is a stored attribute of ``module`` (a tensor, submodule or value), not a
    property computed on access (LowRankLinear.weight multiplies its factors out)."""
    if attr in module._parameters or attr in module._buffers or attr in module._modules or attr in vars(module):
        return True
    static = inspect.getattr_static(module, attr, None)
    return static is not None and not isinstance(static, property)


def _direct_read_reason(name: str, new: nn.Module, model: nn.Module) -> str | None:
    """Why ``new`` cannot take the place of ``name``: its parent's forward reads an attribute of it
    directly that ``new`` does not store (the parent would do the layer's math itself, or fail)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    for child, attr, meth in _child_reads(type(parent)):
        if child == leaf and not _has_plain(new, attr):
            return (f"{type(parent).__name__}.{meth} reads {leaf}.{attr} directly instead of calling the module, "
                    f"which the {type(new).__name__} that would replace it does not store")
    return None


MODEL_KEY = "(model)"  # the fallbacks key of a model-level method

DEFAULT_CALIBRATION_TEXTS = 64  # paragraphs of slimrt's own text, 8 per batch, up to 512 tokens each


def uses_calibration(recipe: "Recipe") -> bool:
    """Whether any method of the recipe reads calibration data."""
    return any((METHODS[m].uses_calibration or METHODS[m].needs_calibration)(recipe) for m in recipe.methods)


def default_calibration(recipe: "Recipe", tokenizer: Any) -> list[list[str]] | None:
    """slimrt's own calibration text for a recipe that uses calibration data and got none (None if it
    needs none, or there is no tokenizer to read text with): the "calibration" split of the pydoc
    paragraphs, which evaluation never sees. Says so in one log line."""
    if tokenizer is None or not uses_calibration(recipe):
        return None
    from slimrt.data import pydoc_paragraphs

    texts = pydoc_paragraphs("calibration")[:DEFAULT_CALIBRATION_TEXTS]
    log.warning("compress: no calibration data given; using slimrt's own text (%d paragraphs of Python's "
                "documentation, pydoc_data.topics); pass calibration=... (CLI: --calibration FILE) for your own",
                len(texts))
    return [texts[i:i + 8] for i in range(0, len(texts), 8)]


def swap(model: nn.Module, recipe: "Recipe", calibration: Iterable[Any] | None = None, tokenizer: Any = None,
         progress: bool = True, model_rows: list[dict[str, Any]] | None = None,
         ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Applies the recipe's methods in order, in place. Returns (layer rows, {name: fallback reason});
    model-level methods append {"method", **info} to ``model_rows`` when it is given."""
    from tqdm import tqdm

    from slimrt.compress import calibration as calib

    if calibration is None:
        calibration = default_calibration(recipe, tokenizer)

    rows: list[dict[str, Any]] = []
    fallbacks: dict[str, str] = {}
    if calibration is not None and not any(METHODS[m].needs_calibration(recipe) for m in recipe.methods):
        log.info("calibration data is not used by this recipe (%s)", ", ".join(recipe.methods))
    for method_name in recipe.methods:
        method = METHODS[method_name]
        ctx = Context(recipe=recipe, params=dict(recipe.params.get(method_name, {})), model=model,
                      calibration=calibration, tokenizer=tokenizer)
        if method.apply_model is not None:
            try:
                info = method.apply_model(model, ctx)
            except Fallback as e:
                fallbacks[MODEL_KEY] = f"{method_name}: {e}"
                log.info("%s not applied (%s)", method_name, e)
                continue
            if model_rows is not None:
                model_rows.append({"method": method_name, **info})
            continue
        todo = candidates(model, recipe, method)
        if method.needs_calibration(recipe) and todo:
            if calibration is None:
                raise ValueError(f"compress: method {method_name!r} with this recipe needs calibration data "
                                 "(smoothquant=True); pass calibration=[batches], or a tokenizer so that "
                                 "slimrt's own text can be used")
            ctx.shared_input = {}
            ctx.act_amax = calib.collect_input_amax(model, [m for _, m in todo], [n for n, _ in todo],
                                                    calibration, tokenizer, progress=progress,
                                                    shared=ctx.shared_input)
        if method.prepare is not None and todo:
            method.prepare(model, todo, ctx, calibration, tokenizer, progress)
        shared = _shared_params(model)
        bar = tqdm(todo, desc=f"slimrt {method_name}", unit="layer", disable=not progress, leave=False)
        for name, module in bar:
            reason = _skip_reason(name, module, model)
            if reason is None:
                try:
                    new, info = method.convert(name, module, ctx)
                    reason = _direct_read_reason(name, new, model)
                except Fallback as e:
                    reason = str(e)
            if reason is not None:
                fallbacks[name] = f"{method_name}: {reason}"
                log.info("%s kept dense (%s)", name, reason)
                continue
            tied = sorted({n for p in module.parameters() for n in shared[id(p)]
                           if not n.startswith(name + ".")})
            if tied:
                log.warning("%s shares its weight with %s; compressing it with %s unties them "
                            "(the other copy stays dense)", name, ", ".join(tied), method_name)
                _untie_config(model)
            params_before, bytes_before = state_size(module)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
            params_after, bytes_after = state_size(new)
            rows.append({"name": name, "type": type(module).__name__, "method": method_name, **info,
                         "params_before": params_before, "params_after": params_after,
                         "bytes_before": bytes_before, "bytes_after": bytes_after,
                         **({"untied_from": tied} if tied else {})})
    return rows, fallbacks
