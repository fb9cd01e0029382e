"""slimrt.Recipe: validation (errors name the field), dict/JSON round trip, presets, name matching."""

import dataclasses
import json

import pytest

import slimrt
from slimrt.recipe import DEFAULT_IGNORE, EMBEDDINGS_IGNORE, PRESETS, RECIPE_VERSION, Recipe, resolve


def test_defaults_and_presets():
    r = Recipe()
    assert r.version == RECIPE_VERSION and r.methods == ("w8a8",) and r.ignore == DEFAULT_IGNORE
    assert not r.smoothquant and r.alpha == 0.5
    assert {"w8a8", "w8"} <= set(PRESETS)
    assert PRESETS["w8"].methods == ("w8",)
    assert slimrt.Recipe is Recipe


def test_preset_override():
    r = Recipe.preset("w8", ignore=[])
    assert r.methods == ("w8",) and r.ignore == ()
    assert PRESETS["w8"].ignore == EMBEDDINGS_IGNORE  # the preset itself is untouched
    r = Recipe.preset("w8a8", smoothquant=True, alpha=0.7, targets=[r"\.mlp\."])
    assert r.smoothquant and r.alpha == 0.7 and r.targets == (r"\.mlp\.",)
    with pytest.raises(ValueError, match="unknown preset 'w3'"):
        Recipe.preset("w3")
    with pytest.raises(ValueError, match="unknown field 'bits'"):
        Recipe.preset("w8", bits=4)


def test_frozen():
    r = Recipe()
    assert hash(r) == hash(Recipe()) and r == Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.alpha = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("recipe", [
    Recipe(),
    Recipe.preset("w8", ignore=[]),
    Recipe(methods=["w8a8"], targets=[r"mlp", r"fc\d"], ignore=["lm_head"], smoothquant=True, alpha=0.25),
])
def test_round_trip(recipe):
    d = recipe.to_dict()
    d2 = json.loads(json.dumps(d))
    assert Recipe.from_dict(d2) == recipe
    assert Recipe.from_dict(d2).to_dict() == d


@pytest.mark.parametrize("d, field", [
    ({"bits": 8}, "'bits'"),
    ({"methods": "w8a8"}, "Recipe.methods"),
    ({"methods": [8]}, "Recipe.methods"),
    ({"methods": []}, "Recipe.methods is empty"),
    ({"methods": ["w3"]}, "unknown method 'w3'"),
    ({"methods": ["w8", "w8"]}, "twice"),
    ({"methods": ["w8a8", "w8"]}, "cannot be combined"),
    ({"version": "1"}, "Recipe.version"),
    ({"version": RECIPE_VERSION + 1}, "Recipe.version"),
    ({"version": 0}, "Recipe.version"),
    ({"targets": "mlp"}, "Recipe.targets"),
    ({"ignore": ["(unclosed"]}, "Recipe.ignore"),
    ({"smoothquant": "yes"}, "Recipe.smoothquant"),
    ({"smoothquant": 1}, "Recipe.smoothquant"),
    ({"alpha": 1.5}, "Recipe.alpha"),
    ({"alpha": -0.1}, "Recipe.alpha"),
    ({"alpha": "0.5"}, "Recipe.alpha"),
    ({"alpha": True}, "Recipe.alpha"),
    ({"alpha": float("nan")}, "Recipe.alpha"),
    ({"methods": ["w8"], "smoothquant": True}, "Recipe.smoothquant"),
    ({"params": {"w8": {}}}, "Recipe.params"),
    ({"params": {"w8a8": {"group_size": 4}}}, "unknown parameter 'group_size'"),
    ({"params": {"w8a8": 3}}, "Recipe.params.w8a8"),
    ({"params": []}, "Recipe.params"),
])
def test_bad_values_name_the_field(d, field):
    with pytest.raises(ValueError) as e:
        Recipe.from_dict(d)
    assert field in str(e.value), str(e.value)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ValueError, match="JSON object"):
        Recipe.from_dict(["w8a8"])  # type: ignore[arg-type]


def test_resolve_every_form(tmp_path):
    r = Recipe.preset("w8", ignore=[])
    assert resolve("w8a8") == PRESETS["w8a8"]
    assert resolve(r) is r
    assert resolve(r.to_dict()) == r
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(r.to_dict()))
    assert resolve(str(path)) == r and resolve(path) == r
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve(bad)
    with pytest.raises(ValueError, match="neither a preset"):
        resolve("w8a9")
    with pytest.raises(ValueError, match="preset name, a Recipe"):
        resolve(8)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, default, mlp_only", [
    ("lm_head", False, False),
    ("model.embed_tokens", False, False),
    ("embed_out", False, False),
    ("bert.embeddings.word_embeddings", False, False),
    ("transformer.wte", False, False),
    ("model.layers.0.self_attn.q_proj", True, False),
    ("model.layers.0.mlp.down_proj", True, True),
    ("transformer.h.1.mlp.c_fc", True, True),
    ("encoder.layer.0.intermediate.dense", True, False),
])
def test_matches(name, default, mlp_only):
    assert Recipe().matches(name) is default
    assert Recipe(targets=[r"\.mlp\."]).matches(name) is mlp_only
    assert Recipe(ignore=[]).matches(name) is True
