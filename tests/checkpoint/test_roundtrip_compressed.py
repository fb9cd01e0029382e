"""compress -> save -> load gives bit-identical outputs, for each model family: MiniLM-shaped BERT,
GPT-2 (Conv1D layers), Llama, and a plain nn.Sequential MLP."""

import pytest
import torch

import slimrt
from slimrt.nn import Int8Linear
from test_checkpoint import BUILDERS, _outputs


@pytest.mark.parametrize("recipe", ["w8a8", "w8"])
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_compress_save_load_is_bit_identical(tmp_path, kind, recipe):
    model = BUILDERS[kind]()
    slimrt.compress(model, recipe, progress=False)
    n_int8 = sum(isinstance(m, Int8Linear) for m in model.modules())
    assert n_int8 >= 2, f"{kind}: compress swapped only {n_int8} layers"
    ref = _outputs(model, kind)
    slimrt.save(model, tmp_path / "ck")
    rt = slimrt.load(tmp_path / "ck", thin=False) if kind != "mlp" else None  # thin=False: the HF forward
    loaded = rt.model if rt is not None else slimrt.checkpoint.load_model(tmp_path / "ck").model
    assert sum(isinstance(m, Int8Linear) for m in loaded.modules()) == n_int8
    out = _outputs(loaded, kind)
    assert torch.equal(out, ref), f"{kind}/{recipe}: max diff {(out - ref).abs().max().item():.3g} after reload"
    assert loaded.slimrt_meta["recipe"]["methods"] == [recipe]
