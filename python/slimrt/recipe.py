"""Recipe: what slimrt.compress does to a model, as a frozen, validated, JSON-able dataclass.

A recipe names one or more methods applied in order (each one registered in ``METHODS`` by the
module of slimrt.compress that implements it), their parameters, and which modules they touch:
``targets`` and ``ignore`` are regular expressions searched (``re.search``) in module names from
``model.named_modules()``.
A module is touched when ``targets`` is empty or one target matches, and no ``ignore`` matches.
The default ``ignore`` keeps the lm_head and the embeddings dense; the int8 presets ("w8", "w8a8")
quantize the lm_head too (untied from a shared embedding, which stays a float lookup table).

    Recipe.preset("w8a8")                                  # int8 weights and activations
    Recipe.preset("w8", ignore=list(DEFAULT_IGNORE))       # keep the lm_head dense
    Recipe(methods=("w8a8",), targets=(r"\\.mlp\\.",))      # only the MLPs
    Recipe.from_dict(json.load(f)); recipe.to_dict()       # the form stored in checkpoints
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

RECIPE_VERSION = 1


class MethodSpec(Protocol):
    """What a recipe checks of a compression method (slimrt.compress.swap.Method is one): its
    ``group`` (methods of one group exclude each other) and its ``params``, {param: (type, default,
    check)} where check(value) returns None or a sentence saying what is wrong."""

    @property
    def group(self) -> str: ...

    @property
    def params(self) -> Mapping[str, tuple[type, Any, Callable[[Any], str | None] | None]]: ...


# The compression methods by name. Each module of slimrt.compress registers its methods here when
# it is imported (slimrt.compress.swap.register); recipes check method names and parameters
# against it. The registry lives with the recipe so that the recipe never imports the compressor.
METHODS: dict[str, MethodSpec] = {}

# Module names of the output head (the projection to the vocabulary) and of the embeddings, as
# BERT, GPT-2, Llama, GPT-NeoX and T5 name them. Embeddings are not Linear layers, so int8 leaves
# them anyway; the patterns matter for methods that could touch them.
HEAD_IGNORE: tuple[str, ...] = (r"(^|\.)lm_head$", r"(^|\.)embed_out$")
EMBEDDINGS_IGNORE: tuple[str, ...] = (r"(^|\.)(embed_tokens|embeddings|word_embeddings|wte|wpe|shared)(\.|$)",)
# A Recipe built by hand keeps both dense. The int8 presets quantize the head (see compress/int8.py):
# in a small decoder with a large vocabulary it is the largest single weight (SmolLM2-135M: 49152 x
# 576, 113 MB in float32, more than its whole int8 body), read once per generated token.
DEFAULT_IGNORE: tuple[str, ...] = HEAD_IGNORE + EMBEDDINGS_IGNORE


@dataclass(frozen=True)
class Recipe:
    """A validated compression recipe; construct directly, with ``preset`` or with ``from_dict``.

    version: recipe format version (``RECIPE_VERSION``).
    methods: method names applied in order, e.g. ("w8a8",) or, once registered, ("lowrank", "w8").
    params: per-method parameters, {method: {name: value}}; missing ones take the method's defaults.
    targets / ignore: regexes over module names (see the module doc).
    smoothquant: migrate activation outliers into the weights before w8a8 (needs calibration data).
    alpha: SmoothQuant migration strength in [0, 1]: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha).
    """

    version: int = RECIPE_VERSION
    methods: tuple[str, ...] = ("w8a8",)
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)  # a dict: not hashed
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    smoothquant: bool = False
    alpha: float = 0.5

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the frozen recipe cannot change under a caller.
        for name in ("methods", "targets", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"Recipe.{name} must be a list of strings, got {value!r}")
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"Recipe.{name} must hold only strings, got {list(value)!r}")
            object.__setattr__(self, name, tuple(value))
        if type(self.version) is not int:
            raise ValueError(f"Recipe.version must be an int, got {self.version!r}")
        if self.version < 1 or self.version > RECIPE_VERSION:
            raise ValueError(f"Recipe.version is {self.version}, but this slimrt reads recipe versions 1..{RECIPE_VERSION}")
        for name in ("targets", "ignore"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"Recipe.{name}: {pattern!r} is not a valid regular expression ({e})") from None
        if type(self.smoothquant) is not bool:
            raise ValueError(f"Recipe.smoothquant must be true or false, got {self.smoothquant!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Recipe.alpha must be a number in [0, 1], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "params", _validate_methods(self.methods, self.params))
        if self.smoothquant and "w8a8" not in self.methods:
            raise ValueError("Recipe.smoothquant applies to method 'w8a8' only (w8 keeps activations in float)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Recipe":
        """A named preset (see ``PRESETS``) with some fields overridden: ``preset("w8", ignore=[])``."""
        if name not in PRESETS:
            raise ValueError(f"Recipe.preset: unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"Recipe.preset: unknown field {unknown[0]!r}; fields are {', '.join(sorted(fields))}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that ``from_dict`` turns back into an equal Recipe."""
        return {
            "version": self.version,
            "methods": list(self.methods),
            "params": {m: dict(p) for m, p in self.params.items()},
            "targets": list(self.targets),
            "ignore": list(self.ignore),
            "smoothquant": self.smoothquant,
            "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """Builds and validates a Recipe; unknown keys, wrong types and bad values raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a recipe must be a JSON object, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in fields:
                raise ValueError(f"recipe: unknown field {key!r}; fields are {', '.join(sorted(fields))}")
        return cls(**dict(d))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        """Reads a recipe from a JSON file."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"recipe file {os.fspath(path)!r} is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def matches(self, module_name: str) -> bool:
        """True if this recipe's targets/ignore select the module of this name."""
        if self.targets and not any(re.search(p, module_name) for p in self.targets):
            return False
        return not any(re.search(p, module_name) for p in self.ignore)


def _validate_methods(methods: tuple[str, ...], params: Any) -> dict[str, dict[str, Any]]:
    """Checks method names and their parameters against the method registry; fills in defaults."""
    if not methods:
        raise ValueError("Recipe.methods is empty; name at least one of " + ", ".join(sorted(METHODS)))
    if len(set(methods)) != len(methods):
        raise ValueError(f"Recipe.methods lists a method twice: {list(methods)!r}")
    groups: dict[str, str] = {}
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"Recipe.methods: unknown method {m!r}; known methods: {', '.join(sorted(METHODS))}")
        group = METHODS[m].group
        if group in groups:
            raise ValueError(f"Recipe.methods: {groups[group]!r} and {m!r} cannot be combined (both are {group} methods)")
        groups[group] = m
    if not isinstance(params, Mapping):
        raise ValueError(f"Recipe.params must be an object {{method: {{param: value}}}}, got {params!r}")
    out: dict[str, dict[str, Any]] = {}
    for m in params:
        if m not in methods:
            raise ValueError(f"Recipe.params: parameters given for {m!r}, which is not in Recipe.methods")
        if not isinstance(params[m], Mapping):
            raise ValueError(f"Recipe.params.{m} must be an object, got {params[m]!r}")
    for m in methods:
        spec = METHODS[m].params
        given = dict(params.get(m, {}))
        for key, value in given.items():
            if key not in spec:
                known = ", ".join(sorted(spec)) or "none"
                raise ValueError(f"Recipe.params.{m}: unknown parameter {key!r}; known: {known}")
            kind, _default, check = spec[key]
            if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
                raise ValueError(f"Recipe.params.{m}.{key} must be {kind.__name__}, got {value!r}")
            problem = check(value) if check else None
            if problem:
                raise ValueError(f"Recipe.params.{m}.{key}={value!r}: {problem}")
        for key, (_kind, default, check) in spec.items():  # a default that fails its check = required
            problem = None if key in given or not check else check(default)
            if problem:
                raise ValueError(f"Recipe.params.{m}.{key} is required: it {problem}")
        out[m] = {key: given.get(key, default) for key, (_kind, default, _check) in spec.items()}
    return out


def resolve(recipe: "Recipe | str | os.PathLike | Mapping[str, Any]") -> Recipe:
    """A Recipe from a Recipe, a preset name, a path to a JSON file, or a dict."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        if isinstance(recipe, str) and recipe in PRESETS:
            return PRESETS[recipe]
        if os.path.isfile(recipe):
            return Recipe.load(recipe)
        raise ValueError(f"recipe {os.fspath(recipe)!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                         "nor an existing JSON file")
    raise ValueError(f"recipe must be a preset name, a Recipe, a dict or a JSON file path, got {type(recipe).__name__}")


# Named presets. The module of slimrt.compress that implements a method registers its presets
# (register_preset) right after the method itself, so a preset never names an unregistered method.
PRESETS: dict[str, Recipe] = {}


def register_preset(name: str, recipe: Recipe) -> Recipe:
    """Adds a named preset (``Recipe.preset(name)``, ``slimrt.compress(model, name)``)."""
    if name in PRESETS:
        raise ValueError(f"recipe preset {name!r} is already registered")
    PRESETS[name] = recipe
    return recipe
