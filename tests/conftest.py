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
