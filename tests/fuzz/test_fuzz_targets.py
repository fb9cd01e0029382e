"""The fuzz targets inside `make test`, without atheris: their seeds are valid inputs, and a fixed
set of mutations of each seed gets only the target's own refusal (CheckpointError, GGUFError).

This keeps the harnesses from rotting between `make test-fuzz` runs, and holds the inputs the
fuzzer once found as regression cases (FOUND below).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_checkpoint
import fuzz_gguf

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def checkpoint_seeds():
    return fuzz_checkpoint.seeds()


@pytest.fixture(scope="module")
def gguf_seeds():
    return fuzz_gguf.seeds()


def test_checkpoint_seeds_are_valid_checkpoints(checkpoint_seeds):
    from slimrt import checkpoint

    for name, data in checkpoint_seeds.items():
        fuzz_checkpoint.test_one_input(data)  # refusals pass silently: load again to see it load
        thin = bool(fuzz_checkpoint.unpack(data)[0] & fuzz_checkpoint.THIN)
        checkpoint.load_model(fuzz_checkpoint._DIR + "/ck", thin=thin)


def test_gguf_seeds_validate(gguf_seeds):
    from slimrt.gguf import GGUFError, _validated

    fuzz_gguf.test_one_input(gguf_seeds["llama"])
    assert _validated(fuzz_gguf._PATH)["architecture"] == "llama"
    fuzz_gguf.test_one_input(gguf_seeds["unknown_arch"])
    with pytest.raises(GGUFError, match="architecture 'notamodel' cannot be loaded"):
        _validated(fuzz_gguf._PATH)


def _mutations(data: bytes, rng: random.Random, n: int):
    """libFuzzer-like edits: byte flips, interesting values, cuts, inserts, copies within the input."""
    interesting = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00" * 8, b"\xff" * 8, b"9" * 20, b"-1", b"1e999",
                   b"[]", b"{}", b"null", b'"', b"\\u0000"]
    for _ in range(n):
        blob = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(blob)) if blob else 0
            op = rng.randrange(5)
            if op == 0 and blob:
                blob[i] = rng.randrange(256)
            elif op == 1:
                v = rng.choice(interesting)
                blob[i:i + len(v)] = v
            elif op == 2:
                del blob[i:i + rng.randint(1, 64)]
            elif op == 3:
                blob[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif blob:
                j = rng.randrange(len(blob))
                blob[i:i] = blob[j:j + rng.randint(1, 32)]
        yield bytes(blob)


def _meta_mutations(data: bytes, rng: random.Random, n: int):
    """Edits confined to slimrt.json (the flags re-fix the checksums), where most of the checks are."""
    flags, meta, tensors = fuzz_checkpoint.unpack(data)
    for m in _mutations(meta, rng, n):
        yield fuzz_checkpoint.pack(m, tensors, flags)


def test_checkpoint_loader_refuses_mutations_with_checkpoint_error(checkpoint_seeds):
    rng = random.Random(0)
    for name in sorted(checkpoint_seeds):
        data = checkpoint_seeds[name]
        for i, mutated in enumerate([*_mutations(data, rng, 15), *_meta_mutations(data, rng, 25)]):
            try:
                fuzz_checkpoint.test_one_input(mutated)
            except Exception as e:
                pytest.fail(f"seed {name}, mutation {i}: {type(e).__name__}: {e}")


def test_gguf_validation_refuses_mutations_with_gguf_error(gguf_seeds):
    rng = random.Random(0)
    for name in sorted(gguf_seeds):
        for i, mutated in enumerate(_mutations(gguf_seeds[name], rng, 150)):
            try:
                fuzz_gguf.test_one_input(mutated)
            except Exception as e:
                pytest.fail(f"seed {name}, mutation {i}: {type(e).__name__}: {e}")


def _gguf_with_array(item_type: int, count: int) -> bytes:
    """A GGUF header with one key whose array value claims ``count`` items of ``item_type``."""
    u32, u64 = (lambda v: v.to_bytes(4, "little")), (lambda v: v.to_bytes(8, "little"))
    key = b"general.file_type"
    return (b"GGUF" + u32(3) + u64(0) + u64(1) + u64(len(key)) + key + u32(9) + u32(item_type) + u64(count)
            + bytes(64))


# Inputs the fuzzing found, each fixed in slimrt, kept as regression cases: (target, id, input).
# The gguf package's reader loops once per claimed array item without advancing past the end of the
# file, so these hung it (growing lists until the OOM killer came) before slimrt walked the header.
FOUND: list[tuple[str, str, bytes]] = [
    ("gguf", "u8_array_of_2^62", _gguf_with_array(0, 2**62)),
    ("gguf", "string_array_of_2^40", _gguf_with_array(8, 2**40)),
    ("gguf", "nested_array_of_2^40", _gguf_with_array(9, 2**40)),
]


@pytest.mark.parametrize("target, case, data", FOUND, ids=[f"{t}-{c}" for t, c, _ in FOUND])
def test_found_inputs_stay_fixed(target, case, data):
    from slimrt.gguf import GGUFError, inspect

    module = {"checkpoint": fuzz_checkpoint, "gguf": fuzz_gguf}[target]
    module.test_one_input(data)  # only the target's own refusal may escape
    if target == "gguf":
        with pytest.raises(GGUFError, match=r"corrupt or truncated GGUF \(value of 'general\.file_type'"):
            inspect(fuzz_gguf._PATH)


# Found by `make test-fuzz` in CI (2026-12-07): a thin load of a tensor named "a..b.weight" or ".weight"
# reached nn.Module.add_module("") and escaped as KeyError. Names that shadow a module attribute too.
@pytest.mark.parametrize("bad", ["bert..pooler.dense.weight", ".weight", "training.weight", "forward.x.weight"])
def test_thin_load_refuses_tensor_names_that_are_not_module_paths(checkpoint_seeds, bad):
    from safetensors.torch import load, save

    from slimrt import checkpoint
    from slimrt.errors import CheckpointError

    flags, meta, tensors = fuzz_checkpoint.unpack(checkpoint_seeds["bert_thin"])
    stored = load(tensors)
    stored[bad] = stored.pop(sorted(stored)[-1])
    fuzz_checkpoint.test_one_input(fuzz_checkpoint.pack(meta, save(stored), flags))  # CheckpointError only
    with pytest.raises(CheckpointError, match="model.safetensors: "):
        checkpoint.load_model(fuzz_checkpoint._DIR + "/ck", thin=True)


# Found by `make test-fuzz` (2026-12-08): a dense layer's weight stored as an integer dtype reached
# nn.Linear(dtype=int32), whose Parameter raised RuntimeError instead of the loader's refusal.
@pytest.mark.parametrize("dtype", ["int32", "int8", "bool"])
def test_thin_load_refuses_integer_dense_weights(checkpoint_seeds, dtype):
    import torch
    from safetensors.torch import load, save

    from slimrt import checkpoint
    from slimrt.errors import CheckpointError

    flags, meta, tensors = fuzz_checkpoint.unpack(checkpoint_seeds["bert_thin"])
    stored = load(tensors)
    name = next(n for n in sorted(stored) if n.endswith("dense.weight"))
    stored[name] = stored[name].to(getattr(torch, dtype))
    fuzz_checkpoint.test_one_input(fuzz_checkpoint.pack(meta, save(stored), flags))  # CheckpointError only
    with pytest.raises(CheckpointError, match=f"is {dtype}; a .* dense layers hold float tensors"):
        checkpoint.load_model(fuzz_checkpoint._DIR + "/ck", thin=True)


_INSTRUMENTED = """
import sys
sys.path.insert(0, sys.argv[1])
import _instrument, slimrt.checkpoint.format, slimrt.gguf
assert _instrument.instrument(("slimrt.checkpoint", "slimrt.gguf")) > 20
for fn in (slimrt.checkpoint.format.validate, slimrt.gguf._Walker.take, slimrt.gguf.inspect):
    assert "_trace_branch" in fn.__code__.co_names, fn.__qualname__
print("ok")
"""


def test_fuzz_targets_instrument_slimrt():
    # atheris.instrument_imports silently instruments nothing under the editable install (its
    # custom loader): the fuzzer then ran blind, with no coverage. _instrument patches the code itself.
    pytest.importorskip("atheris")
    out = subprocess.run([sys.executable, "-c", _INSTRUMENTED, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
