"""`slimrt embed` / `slimrt generate` as Unix tools: stdin, blank lines, --json, closed pipes, no-text replies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import slimrt
from slimrt.cli import main
from test_runner import byte_bpe_tokenizer, tiny_bert, tiny_llama


@pytest.fixture(scope="module")
def encoder_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "bert"
    slimrt.save(slimrt.compress(tiny_bert(), "w8a8", progress=False), path, tokenizer=byte_bpe_tokenizer())
    return str(path)


def test_embed_reads_stdin_and_keeps_blank_lines(encoder_ckpt, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("the runner\n\nstreams text\n"))
    assert main(["embed", encoder_ckpt, "--file", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3, "one output row per input line, blank lines included"
    want = slimrt.load(encoder_ckpt).embed(["the runner", "", "streams text"])
    assert torch.allclose(torch.tensor(rows), want, atol=1e-5)


def test_embed_json_is_one_object(encoder_ckpt, capsys):
    assert main(["embed", encoder_ckpt, "--text", "a", "--text", "b", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["texts"] == 2 and doc["dim"] == 64 and len(doc["embeddings"]) == 2 and doc["normalized"] is True


def test_closed_pipe_ends_quietly(encoder_ckpt, tmp_path):
    texts = tmp_path / "many.txt"
    texts.write_text("the runner streams text\n" * 4000, encoding="utf-8")
    r = subprocess.run(f"{sys.executable} -m slimrt.cli embed {encoder_ckpt} --file {texts} | head -1",
                       shell=True, capture_output=True, text=True, timeout=600)
    assert len(r.stdout.splitlines()) == 1 and json.loads(r.stdout)
    assert "Broken pipe" not in r.stderr and "error" not in r.stderr, r.stderr


def test_generate_says_why_there_is_no_text(tmp_path, capsys):
    tok = byte_bpe_tokenizer()
    model = tiny_llama(vocab_size=300, max_position_embeddings=128)
    prompt = tok("the runner")["input_ids"]
    first = slimrt.Runner(model).generate_ids([prompt], 1, eos=False)[0][0]
    model.config.eos_token_id = first  # the model's first reply token is now end-of-sequence
    model.generation_config.eos_token_id = first
    path = tmp_path / "llama"
    slimrt.save(model, path, tokenizer=tok)
    assert main(["generate", str(path), "--prompt", "the runner"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "\n" and "ended the sequence at once" in captured.err and "tokens/s" not in captured.err
    assert main(["generate", str(path), "--prompt", "the runner", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["text"] == "" and doc["new_tokens"] == 1 and doc["prompt_tokens"] == len(prompt)
