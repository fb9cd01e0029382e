"""Fuzz target: slimrt.checkpoint.load_model on a checkpoint directory built from the input bytes.

Input: flags (1 byte) | len(slimrt.json) (4 bytes, little-endian) | slimrt.json | model.safetensors.
Flags: FIX_SHA sets files["model.safetensors"] to the sha256 of the safetensors bytes, FIX_DIGEST
restamps slimrt.json's own digest (format.stamp): without them nearly every mutation would stop at
a checksum, and the checks behind the checksums would never be reached. THIN loads with thin=True
(the skeleton slimrt.load builds without transformers, checkpoint/thin.py). The seeds are valid
checkpoints (int8 w8a8 and w8 with smoothing, quantized low-rank, zstd-coded, BERT, tied Llama).

Any exception other than CheckpointError fails, as do crashes and hangs (libFuzzer's -timeout).
Run through tests/fuzz/run.py (`make test-fuzz`); tests/fuzz/test_fuzz_targets.py runs the same
function over the seeds and deterministic mutations of them in `make test`, without atheris.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile

FIX_SHA, FIX_DIGEST, THIN = 1, 2, 4
TENSORS, META = "model.safetensors", "slimrt.json"
_DIR = None


def pack(meta: bytes, tensors: bytes, flags: int = FIX_SHA | FIX_DIGEST) -> bytes:
    return bytes([flags]) + struct.pack("<I", len(meta)) + meta + tensors


def unpack(data: bytes) -> tuple[int, bytes, bytes]:
    if len(data) < 5:
        return 0, data, b""
    n = struct.unpack("<I", data[1:5])[0]
    return data[0], data[5:5 + n], data[5 + n:]


def _fix(meta: bytes, tensors: bytes, flags: int) -> bytes:
    from slimrt.checkpoint import format as fmt
    from slimrt.errors import CheckpointError

    try:
        obj = json.loads(meta)
    except (ValueError, RecursionError):
        return meta
    if not isinstance(obj, dict):
        return meta
    if flags & FIX_SHA and isinstance(obj.get("files"), dict):
        obj["files"][TENSORS] = hashlib.sha256(tensors).hexdigest()
    if flags & FIX_DIGEST:
        try:
            fmt.stamp(obj)
        except CheckpointError:  # e.g. a number beyond the float range: the loader must refuse it itself
            return meta
    try:
        return json.dumps(obj).encode()
    except (ValueError, RecursionError):
        return meta


def test_one_input(data: bytes) -> None:
    """Loads the checkpoint the input describes; only CheckpointError may escape as 'refused'."""
    global _DIR
    from slimrt import checkpoint
    from slimrt.errors import CheckpointError

    flags, meta, tensors = unpack(data)
    if flags & (FIX_SHA | FIX_DIGEST):
        meta = _fix(meta, tensors, flags)
    if _DIR is None:
        _DIR = tempfile.mkdtemp(prefix="slimrt-fuzz-ck-")
    ck = os.path.join(_DIR, "ck")
    shutil.rmtree(ck, ignore_errors=True)
    os.mkdir(ck)
    with open(os.path.join(ck, META), "wb") as f:
        f.write(meta)
    with open(os.path.join(ck, TENSORS), "wb") as f:
        f.write(tensors)
    try:
        checkpoint.load_model(ck, thin=bool(flags & THIN))
    except CheckpointError:
        pass


def seeds() -> dict[str, bytes]:
    """Valid checkpoints, small enough for fast mutation, each with the fix-ups on and off."""
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    import slimrt
    from slimrt.nn import Int8Linear, LowRankLinear

    torch.manual_seed(0)
    models = {
        "mlp_w8a8": (nn.Sequential(Int8Linear.from_linear(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 4)), None),
        "mlp_w8_smooth": (nn.Sequential(Int8Linear.from_weight(torch.randn(12, 8), torch.randn(12), mode="w8",
                                                               smooth=torch.rand(8) + 0.5), nn.LayerNorm(12)), None),
        "lowrank_q": (nn.Sequential(LowRankLinear.from_linear(nn.Linear(16, 8), rank=4, quantized=True)), None),
        "zstd": (nn.Sequential(Int8Linear.from_linear(nn.Linear(64, 32))), "zstd"),
        "bert": (BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=40, max_position_embeddings=16)), None),
        "llama_tied": (LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, num_key_value_heads=1, vocab_size=40,
                                                    max_position_embeddings=16, tie_word_embeddings=True)), None),
    }
    out = {}
    with tempfile.TemporaryDirectory(prefix="slimrt-fuzz-seed-") as tmp:
        for name, (model, entropy) in models.items():
            path = os.path.join(tmp, name)
            slimrt.save(model.eval(), path, entropy=entropy)
            with open(os.path.join(path, META), "rb") as f:
                meta = f.read()
            with open(os.path.join(path, TENSORS), "rb") as f:
                tensors = f.read()
            out[name] = pack(meta, tensors)
            out[name + "_raw"] = pack(meta, tensors, flags=0)
            if name in ("bert", "llama_tied"):
                out[name + "_thin"] = pack(meta, tensors, flags=FIX_SHA | FIX_DIGEST | THIN)
    return out


def main() -> None:
    import atheris
    import torch

    import _instrument
    import slimrt  # noqa: F401
    import slimrt.checkpoint.hf_config  # noqa: F401  (imported lazily by the loader: load it now)
    import slimrt.checkpoint.skeleton  # noqa: F401
    import slimrt.nn  # noqa: F401

    # The loader's own code: the checkpoint package, the modules it rebuilds, the errors.
    _instrument.instrument(("slimrt.checkpoint", "slimrt.nn", "slimrt.errors"))
    torch.set_num_threads(1)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
