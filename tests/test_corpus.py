"""slimrt embed --input/--output (slimrt.corpus): corpus files into Parquet shards, locally.

A tiny int8 BERT saved as a checkpoint; corpora in each format with odd shapes (a shard straddling
Parquet row groups, blank lines, CRLF, no final newline). Every row is written exactly once and
equals Runner.embed of its text; a run stopped between shards, a half-written temporary file and a
damaged shard are all resumed without a row twice or missing; a different plan is refused.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import slimrt  # noqa: E402
from slimrt.cli import main  # noqa: E402
from slimrt.corpus import MANIFEST, embed_corpus, open_corpus  # noqa: E402

from test_runner import byte_bpe_tokenizer, tiny_bert, to_int8  # noqa: E402

WORDS = "the runner streams text as it is decoded héllo wörld shard corpus passage".split()


def passages(n: int, seed: int = 0) -> list[str]:
    """n passages of 0 to 40 words (some empty), deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(0, 40)))) for _ in range(n)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny-bert"
    slimrt.save(to_int8(tiny_bert()), path, tokenizer=byte_bpe_tokenizer())
    return path, slimrt.load(path)


def read_output(out) -> pa.Table:
    return pq.read_table(out)


def embeddings(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)


def check_rows(table: pa.Table, n: int) -> None:
    """Rows 0..n-1, each exactly once, in order."""
    rows = table.column("row").to_numpy()
    assert len(rows) == n and np.array_equal(rows, np.arange(n)), \
        f"{len(rows)} rows for {n}; duplicated: {n - len(np.unique(rows))}, first out of place: " \
        f"{np.nonzero(rows != np.arange(len(rows)))[0][:5] if len(rows) == n else '-'}"


def check_equal(got: np.ndarray, want: np.ndarray, floor: float = 0.9999) -> None:
    """Cosine per row >= floor; a text of no tokens (empty, under a tokenizer without special tokens)
    pools to zeros, and zeros equal zeros."""
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cos = np.where(norms > 0, (got * want).sum(1) / np.maximum(norms, 1e-30), 1.0)
    assert ((norms > 0) | ((got == 0).all(1) & (want == 0).all(1))).all(), "a zero embedding against a non-zero one"
    worst = np.argsort(cos)[:3]
    assert cos.min() >= floor, f"cosine {cos.min():.6f} < {floor}; worst rows {worst.tolist()}: {cos[worst].tolist()}"


def write_jsonl(path, texts, ids=None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t} if ids is None else {"id": ids[i], "text": t}) + "\n")
            if i % 97 == 5:
                f.write("\n")  # blank lines are not records


@pytest.mark.parametrize("kind", ["jsonl-str-ids", "jsonl-int-ids", "jsonl-strings", "parquet", "text"])
def test_every_row_once_and_equal_to_runner_embed(encoder, tmp_path, kind):
    ckpt, rt = encoder
    texts = passages(203)
    ids = None
    if kind.startswith("jsonl"):
        src = tmp_path / "c.jsonl"
        if kind == "jsonl-strings":
            src.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        else:
            ids = [f"doc-{i}" for i in range(len(texts))] if kind == "jsonl-str-ids" else [7 * i for i in range(203)]
            write_jsonl(src, texts, ids)
    elif kind == "parquet":
        src = tmp_path / "c.parquet"
        ids = [1000 + i for i in range(len(texts))]
        # row groups of 33: a shard of 50 rows spans two or three of them
        pq.write_table(pa.table({"pid": pa.array(ids), "body": texts}), src, row_group_size=33)
    else:
        src = tmp_path / "c.txt"
        texts[3] = ""  # a blank line is a row of its own
        src.write_bytes(("\r\n".join(texts[:100]) + "\n" + "\n".join(texts[100:])).encode())  # no final newline
    fields = {"text_field": "body", "id_field": "pid"} if kind == "parquet" else {}
    report = embed_corpus(ckpt, src, tmp_path / "out", shard_rows=50, progress=False, **fields)
    assert (report.rows, report.shards, report.embedded, report.skipped) == (203, 5, 203, 0)
    out = read_output(tmp_path / "out")
    check_rows(out, len(texts))
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST] + [f"part-{i:05d}.parquet" for i in range(5)]
    if ids is None:
        assert out.column_names == ["row", "embedding"]
    else:
        assert out.column("id").to_pylist() == ids
    check_equal(embeddings(out), rt.embed(texts).numpy())


def test_a_stopped_run_resumes_with_every_row_once(encoder, tmp_path):
    ckpt, rt = encoder
    texts = passages(530, seed=1)
    src, out = tmp_path / "c.jsonl", tmp_path / "out"
    write_jsonl(src, texts, [f"d{i}" for i in range(len(texts))])

    def stop_after_three(shard: int) -> None:
        if shard == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_corpus(ckpt, src, out, shard_rows=60, progress=False, on_shard=stop_after_three)
    assert len([n for n in os.listdir(out) if n.startswith("part-")]) == 3
    # What a crash can leave besides: a temporary file mid-write and a damaged shard.
    (out / ".part-00005.parquet.tmp").write_bytes(b"PAR1 half a shard")
    (out / "part-00001.parquet").write_bytes(b"not parquet")
    report = embed_corpus(ckpt, src, out, shard_rows=60, progress=False)
    assert (report.skipped, report.embedded) == (2, 530 - 120), report
    table = read_output(out)
    check_rows(table, len(texts))
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(len(texts))]
    check_equal(embeddings(table), rt.embed(texts).numpy())
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    again = embed_corpus(ckpt, src, out, shard_rows=60, progress=False)
    assert (again.skipped, again.embedded) == (9, 0)


def test_another_plan_is_refused_unless_overwrite(encoder, tmp_path):
    ckpt, _ = encoder
    src, out = tmp_path / "c.jsonl", tmp_path / "out"
    write_jsonl(src, passages(40))
    embed_corpus(ckpt, src, out, shard_rows=10, progress=False)
    with pytest.raises(ValueError, match=r"another run \(shard_rows: 10 then, 20 now\).*--overwrite"):
        embed_corpus(ckpt, src, out, shard_rows=20, progress=False)
    report = embed_corpus(ckpt, src, out, shard_rows=20, progress=False, overwrite=True)
    assert report.embedded == 40 and len([n for n in os.listdir(out) if n.startswith("part-")]) == 2
    check_rows(read_output(out), 40)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="non-empty directory that slimrt embed did not write"):
        embed_corpus(ckpt, src, tmp_path / "mine", progress=False)


def test_bad_input_is_named(tmp_path):
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell the format.*--format"):
        open_corpus(tmp_path / "c.csv")
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    corpus = open_corpus(tmp_path / "c.jsonl")
    from slimrt.corpus import iter_shards

    with pytest.raises(ValueError, match=r"line 2: 'text' is None, expected a string \(--text-field\)"):
        list(iter_shards(corpus, 10))
    (tmp_path / "i.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": "x", "text": "b"}\n')
    with pytest.raises(ValueError, match="line 2: 'id' is 'x'; the first record's id was an integer"):
        list(iter_shards(open_corpus(tmp_path / "i.jsonl"), 10))
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="--text-field 'text': .* has no such column \\(columns: body\\)"):
        open_corpus(tmp_path / "c.parquet")


def test_cli_writes_shards_and_reports(encoder, tmp_path, capsys):
    ckpt, rt = encoder
    src = tmp_path / "passages"
    texts = passages(25)
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["embed", str(ckpt), "--input", str(src), "--output", str(tmp_path / "out"), "--format", "text",
                 "--shard-rows", "10", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["shards"], report["embedded"], report["ray"]) == (25, 3, 25, False)
    check_equal(embeddings(read_output(tmp_path / "out")), rt.embed(texts).numpy())
    assert main(["embed", str(ckpt), "--input", str(src), "--output", str(tmp_path / "out"), "--format", "text",
                 "--shard-rows", "10", "--no-progress"]) == 0
    assert "3 shards already done" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--input", "x.jsonl"], "--input and --output go together"),
    (["--text", "a", "--input", "x.jsonl", "--output", "o"], "use one or the other"),
    (["--input", "x.jsonl", "--output", "o", "--workers", "2"], "add --ray"),
    (["--text", "a", "--ray"], "--ray go with --input"),
])
def test_cli_flags_that_do_not_go_together(encoder, capsys, argv, message):
    assert main(["embed", str(encoder[0]), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["embed", "serve"])
def test_ray_without_ray_says_how_to_install(encoder, tmp_path, capsys, monkeypatch, command):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    write_jsonl(tmp_path / "c.jsonl", passages(3))
    if command == "embed":
        argv = ["--input", str(tmp_path / "c.jsonl"), "--output", str(tmp_path / "o"), "--ray"]
    else:
        pytest.importorskip("starlette")
        argv = ["--ray-replicas", "2"]
    assert main([command, str(encoder[0]), *argv]) == 2
    assert "pip install 'slimrt[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_serve_ray_flags_go_with_replicas(encoder, capsys):
    pytest.importorskip("starlette")
    assert main(["serve", str(encoder[0]), "--threads-per-replica", "2"]) == 2
    assert "go with --ray-replicas N" in capsys.readouterr().err


def test_the_old_embed_cli_is_unchanged(encoder, capsys):
    ckpt, rt = encoder
    assert main(["embed", str(ckpt), "--text", "the runner", "--text", "héllo"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert torch.allclose(torch.tensor(rows), rt.embed(["the runner", "héllo"]), atol=1e-5)
