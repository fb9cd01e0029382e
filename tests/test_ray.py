"""slimrt on Ray, against one local Ray cluster that this module starts (ray.init(num_cpus=2)).

- 2,000 passages through ``slimrt embed --ray --workers 2`` equal the local run: same rows, ids and
  order, cosine >= 0.9999 (the same kernels and the same shards: in practice the same bits).
- A worker actor killed (SIGKILL) while the pool is working: the run completes, every row once.
- A run interrupted on Ray and rerun writes no row twice and none missing.
- ``slimrt.ray.embed`` on a Dataset of the caller's; two Ray Serve replicas answer the openai client
  as the single-process server does.
Ray's actors run in their own processes: only slimrt's classes cross to them (not this module's).
"""

from __future__ import annotations

import json
import os
import signal
import socket

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")
psutil = pytest.importorskip("psutil")

import slimrt  # noqa: E402
from slimrt.cli import main  # noqa: E402
from slimrt.corpus import embed_corpus as embed_local  # noqa: E402
from slimrt.ray.data import embed_corpus as embed_on_ray  # noqa: E402

from test_corpus import check_equal, check_rows, embeddings, passages, read_output  # noqa: E402
from test_runner import byte_bpe_tokenizer, tiny_bert, to_int8  # noqa: E402

pytestmark = pytest.mark.ray
N = 2000


@pytest.fixture(scope="module")
def cluster():
    # address="local": a new cluster of this process's own, never one another program started here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 << 20,
             log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny int8 BERT checkpoint, 2,000 passages with string ids, and their local embedding."""
    root = tmp_path_factory.mktemp("ray")
    ckpt = root / "tiny-bert"
    slimrt.save(to_int8(tiny_bert()), ckpt, tokenizer=byte_bpe_tokenizer())
    src = root / "passages.jsonl"
    texts = passages(N, seed=3)
    with open(src, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "text": t}) + "\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker runs
    try:
        embed_local(ckpt, src, root / "local", shard_rows=200, progress=False)
    finally:
        torch.set_num_threads(threads)
    local = read_output(root / "local")
    check_rows(local, N)
    return ckpt, src, local


def check_same_as_local(out, local) -> None:
    table = read_output(out)
    check_rows(table, N)
    assert table.column("id").to_pylist() == local.column("id").to_pylist()
    check_equal(embeddings(table), embeddings(local))


def embedder_pids() -> set[int]:
    """This test's Ray Data embedding actors: processes under this one whose title names them."""
    out = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "MapBatches(Embedder)" in " ".join(proc.cmdline()):
                out.add(proc.pid)
        except psutil.Error:
            continue
    return out


def test_ray_run_equals_the_local_run(cluster, corpus, tmp_path, capsys):
    ckpt, src, local = corpus
    out = tmp_path / "out"
    assert main(["embed", str(ckpt), "--input", str(src), "--output", str(out), "--shard-rows", "200", "--ray",
                 "--workers", "2", "--threads-per-worker", "1", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["shards"], report["embedded"], report["ray"]) == (N, 10, N, True)
    check_same_as_local(out, local)


def test_a_killed_worker_costs_time_not_rows(cluster, corpus, tmp_path):
    ckpt, src, local = corpus
    killed: list[int] = []
    after: set[int] = set()

    def kill_one_at_the_first_shard(shard: int) -> None:
        pids = embedder_pids()
        if not killed:
            assert pids, "no embedding actor process found"
            killed.append(min(pids))
            os.kill(killed[0], signal.SIGKILL)
        else:
            after.update(pids)

    report = embed_on_ray(ckpt, src, tmp_path / "out", workers=2, shard_rows=100, progress=False,
                          on_shard=kill_one_at_the_first_shard)
    assert killed and report.embedded == N and report.skipped == 0
    assert killed[0] not in after
    check_same_as_local(tmp_path / "out", local)


def test_a_run_interrupted_on_ray_resumes_with_every_row_once(cluster, corpus, tmp_path):
    ckpt, src, local = corpus
    out = tmp_path / "out"
    done: list[int] = []

    def interrupt_after_three(shard: int) -> None:
        done.append(shard)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_on_ray(ckpt, src, out, workers=2, shard_rows=250, progress=False, on_shard=interrupt_after_three)
    assert len([n for n in os.listdir(out) if n.startswith("part-")]) == 3
    report = embed_on_ray(ckpt, src, out, workers=2, shard_rows=250, progress=False)
    assert (report.skipped, report.embedded) == (3, N - 750)
    check_same_as_local(out, local)


def test_slimrt_ray_embed_adds_a_column_to_a_dataset(cluster, corpus):
    ckpt, _, _ = corpus
    texts = passages(70, seed=4)
    ds = ray.data.from_items([{"key": i, "text": t} for i, t in enumerate(texts)])
    rows = slimrt.ray.embed(ds, ckpt, workers=1, rows_per_call=16, keep_text=False).take_all()
    rows.sort(key=lambda r: r["key"])
    assert [r["key"] for r in rows] == list(range(70)) and "text" not in rows[0]
    got = np.stack([np.asarray(r["embedding"], np.float32) for r in rows])
    check_equal(got, slimrt.load(ckpt).embed(texts).numpy())


def test_two_serve_replicas_answer_like_the_single_process_server(cluster, tmp_path):
    pytest.importorskip("ray.serve")
    openai = pytest.importorskip("openai")
    from ray import serve

    from slimrt.ray.serve import deploy
    from test_chat import chat_tokenizer
    from test_runner import tiny_llama
    from test_serve import MESSAGES, Live, w8

    path = tmp_path / "tiny-chat"
    slimrt.save(w8(tiny_llama(vocab_size=300, initializer_range=0.2, max_position_embeddings=256)), path,
                tokenizer=chat_tokenizer())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    single = Live(slimrt.serve.app(slimrt.load(path), model_name="tiny-chat", max_context=128))
    try:
        url = deploy(path, replicas=2, port=port, max_context=128)
        status = serve.status().applications["slimrt"].deployments["slimrt"]
        assert status.replica_states.get("RUNNING") == 2, status
        clients = [single.client(), openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)]
        answers = []
        for c in clients:
            assert [m.id for m in c.models.list().data] == ["tiny-chat"]
            texts = [c.completions.create(model="tiny-chat", prompt=p, max_tokens=8, temperature=0).choices[0].text
                     for p in ("the runner", "héllo wörld", "streams text as it is decoded", "a")]
            chat = c.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=8, temperature=0)
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in c.chat.completions.create(
                model="tiny-chat", messages=MESSAGES, max_tokens=8, temperature=0, stream=True) if chunk.choices)
            assert streamed == chat.choices[0].message.content
            with pytest.raises(openai.BadRequestError, match="max_tokens"):
                c.completions.create(model="tiny-chat", prompt="a", max_tokens=100000)
            answers.append((texts, chat.choices[0].message.content, chat.usage.prompt_tokens))
        assert answers[1] == answers[0]
    finally:
        single.close()
        serve.shutdown()
