import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Deterministic, bounded property tests in CI; `HYPOTHESIS_PROFILE=dev` explores more locally.
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Test modules import helpers from each other by module name (from test_runner import tiny_llama):
# tests/ is on sys.path through this conftest.py, and so is every folder that holds such helpers,
# whichever test file runs first or alone. test_decode_step.py uses compress/test_prune.py's models.
sys.path.append(str(Path(__file__).resolve().parent / "compress"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    """compress(recipe) -> the SmolLM2-135M-Instruct GGUF compressed with that preset through the CLI,
    once per recipe for the whole session (the slow SmolLM2 tests share them)."""
    from slimrt import cli
    from test_gguf import smollm2_path

    made = {}

    def compress(recipe: str) -> Path:
        if recipe not in made:
            out = tmp_path_factory.mktemp("smollm2") / recipe
            assert cli.main(["compress", str(smollm2_path()), "-o", str(out), "--recipe", recipe,
                             "--no-progress"]) == 0
            made[recipe] = out
        return made[recipe]

    return compress
