"""Fuzz target: the GGUF validation of slimrt.load_gguf (slimrt.gguf.inspect + the architecture
check) on a .gguf file holding the input bytes.

The seeds are small valid GGUF files written with the gguf package's own writer: key/value fields
of every kind (integers, floats, bools, strings, arrays) and float32, float16 and Q8_0 tensors, for
an architecture transformers reads (llama) and one it does not. Any exception other than
GGUFError fails, as do crashes and hangs. Run through tests/fuzz/run.py (`make test-fuzz`);
tests/fuzz/test_fuzz_targets.py runs it over the seeds and their mutations in `make test`.
"""

from __future__ import annotations

import os
import sys
import tempfile

_PATH = None


def test_one_input(data: bytes) -> None:
    """Validates the input as a GGUF file; only GGUFError may escape as 'refused'."""
    global _PATH
    from slimrt import gguf

    if _PATH is None:
        _PATH = os.path.join(tempfile.mkdtemp(prefix="slimrt-fuzz-gguf-"), "model.gguf")
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        gguf._validated(_PATH)
    except gguf.GGUFError:
        pass


def seeds() -> dict[str, bytes]:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory(prefix="slimrt-fuzz-seed-") as tmp:
        for name, arch in (("llama", "llama"), ("unknown_arch", "notamodel")):
            path = os.path.join(tmp, name + ".gguf")
            w = GGUFWriter(path, arch)
            w.add_name(f"tiny {name}")
            w.add_uint32(f"{arch}.block_count", 1)
            w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
            w.add_bool("tokenizer.ggml.add_bos_token", True)
            w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
            w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
            w.add_int64("general.file_type", 7)
            w.add_tensor("token_embd.weight", rng.standard_normal((3, 8), dtype=np.float32))
            w.add_tensor("output_norm.weight", rng.standard_normal(8).astype(np.float16))
            q8 = rng.standard_normal((2, 32), dtype=np.float32)
            w.add_tensor("output.weight", quantize(q8, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def main() -> None:
    import atheris

    import _instrument
    import gguf  # noqa: F401  (the gguf package's reader runs after slimrt's header walk)
    import slimrt.gguf  # noqa: F401

    _instrument.instrument(("slimrt.gguf", "slimrt.errors", "gguf"))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
