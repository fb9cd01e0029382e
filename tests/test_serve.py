"""slimrt serve: the OpenAI-compatible server on loopback (real uvicorn, the official openai client).

Tiny random models saved as checkpoints and loaded back, as a user would serve them: greedy output
equals Runner.generate / Runner.chat, embeddings equal Runner.embed, 16 concurrent streams each get
their own tokens, every bad request gets its status and an OpenAI error body and the server goes on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import slimrt  # noqa: E402
from slimrt import _native  # noqa: E402
from slimrt.recipe import Recipe  # noqa: E402
from slimrt.serve import app as serve_app  # noqa: E402
from slimrt.serve.engine import BatchEngine, EmbedEngine, SerialEngine  # noqa: E402
from slimrt.serve.server import StopText  # noqa: E402

from test_chat import chat_tokenizer  # noqa: E402
from test_runner import byte_bpe_tokenizer, tiny_bert, tiny_llama, to_int8  # noqa: E402

native = pytest.mark.skipif(not _native.available(), reason="the batched engine needs the native extension")
PROMPTS = ["the runner", "streams text as it is decoded", "héllo wörld", "a", "the the the the runner streams",
           "decoded; system user assistant", "text", "as it is", "runner runner", "héllo", "wörld the runner",
           "streams", "is decoded", "the text", "system", "user assistant the runner streams text as it"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the runner streams text"}]


class Live:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread, until ``close``."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def client(self, key: str = "none") -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    @property
    def engine(self):
        return self.app.state.server.engine

    def metric(self, name: str) -> dict[str, float]:
        """{labels: value} of one metric family's samples from /metrics."""
        out = {}
        for line in self.http.get("/metrics").text.splitlines():
            m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
            if m:
                out[m.group(1) or ""] = float(m.group(2))
        return out

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)


def w8(model):
    slimrt.compress(model, Recipe.preset("w8", ignore=[]), progress=False)
    return model


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny w8 Llama with a chat template, saved and loaded back: (runner, live server)."""
    path = tmp_path_factory.mktemp("serve") / "tiny-chat"
    slimrt.save(w8(tiny_llama(vocab_size=300, initializer_range=0.2, max_position_embeddings=256)), path,
                tokenizer=chat_tokenizer())
    rt = slimrt.load(path)
    live = Live(serve_app(rt, model_name="tiny-chat", max_batch=16, max_context=128, max_body=1 << 16))
    yield rt, live
    live.close()


@pytest.fixture(scope="module")
def long_decoder():
    """A wider w8 Llama whose tokenizer has no EOS: its replies always run to max_tokens, so a long
    one holds its row (about a second for 2000 tokens unloaded) while the test acts around it."""
    tok = byte_bpe_tokenizer()
    tok.eos_token = None
    model = w8(tiny_llama(5, vocab_size=300, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          initializer_range=0.2, max_position_embeddings=2048))
    rt = slimrt.Runner(model, tok)
    assert not rt._eos_ids()
    return rt


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny-bert"
    slimrt.save(to_int8(tiny_bert()), path, tokenizer=byte_bpe_tokenizer())
    rt = slimrt.load(path)
    live = Live(serve_app(rt, model_name="tiny-bert"))
    yield rt, live
    live.close()


def _sse(lines) -> list[dict | str]:
    """The data of each server-sent event (JSON decoded, "[DONE]" kept as is)."""
    out = []
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ----- the official client against the server ------------------------------------------------------
@native
def test_completions_equal_runner_generate(decoder):
    rt, live = decoder
    assert isinstance(live.engine, BatchEngine)
    client = live.client()
    for prompt, n in [("the runner", 12), ("héllo wörld", 20), ("a", 1)]:
        r = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=n, temperature=0)
        assert r.choices[0].text == rt.generate(prompt, n), prompt
        ids = rt.generate_ids([rt.tokenizer(prompt)["input_ids"]], n)[0]
        assert r.usage.prompt_tokens == len(rt.tokenizer(prompt)["input_ids"])
        assert r.usage.completion_tokens == len(ids) and r.choices[0].finish_reason == "length"
    # Sampled with a seed: the request's own generator draws what Runner.generate's does.
    r = client.completions.create(model="tiny-chat", prompt="the runner", max_tokens=16, temperature=0.8, top_p=0.9,
                                  seed=7)
    assert r.choices[0].text == rt.generate("the runner", 16, temperature=0.8, top_p=0.9, seed=7)
    # Token-id prompts and several prompts in one request (one choice each, in order).
    r = client.completions.create(model="tiny-chat", prompt=[[5, 17, 33], [7, 8]], max_tokens=6, temperature=0)
    want = rt.generate_ids([[5, 17, 33], [7, 8]], 6)
    assert [c.text for c in r.choices] == [rt.tokenizer.decode(w, skip_special_tokens=True) for w in want]
    assert [c.index for c in r.choices] == [0, 1] and r.usage.prompt_tokens == 5


@native
def test_chat_plain_and_streamed_equal_runner_chat(decoder):
    rt, live = decoder
    client = live.client()
    want = rt.chat(MESSAGES, max_new_tokens=14)
    r = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=14, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.usage.completion_tokens == 14
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=14, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens
    # max_completion_tokens (OpenAI's newer name) and text parts in the content
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "the runner "},
                                                       {"type": "text", "text": "streams text"}]}]
    r = client.chat.completions.create(model="tiny-chat", messages=parts, max_completion_tokens=14, temperature=0)
    assert r.choices[0].message.content == want


@native
def test_reply_ends_at_end_of_turn_and_at_stop_strings(decoder, tmp_path):
    rt, live = decoder
    client = live.client()
    # stop strings: the text before the first one, finish_reason "stop", streamed the same
    full = rt.generate("the runner", 24)
    cut = full[5:8]
    assert cut and full.index(cut) >= 1
    r = client.completions.create(model="tiny-chat", prompt="the runner", max_tokens=24, temperature=0,
                                  stop=["\u2603never", cut])
    assert r.choices[0].text == full[:full.index(cut)] and r.choices[0].finish_reason == "stop"
    pieces = list(client.completions.create(model="tiny-chat", prompt="the runner", max_tokens=24, temperature=0,
                                            stop=cut, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == full[:full.index(cut)]
    assert pieces[-1].choices[0].finish_reason == "stop"
    # End of turn: a server whose tokenizer ends turns at the 4th greedy token of this chat.
    from slimrt.chat import prompt_ids

    tok = rt.tokenizer
    greedy = rt.generate_ids([prompt_ids(tok, MESSAGES)], 12, eos=False)[0]
    stop_at = next(i for i in range(3, 12) if greedy[i] not in greedy[:i])
    tok2 = chat_tokenizer()
    tok2.eos_token = tok2.convert_ids_to_tokens(greedy[stop_at])
    other = Live(serve_app(slimrt.Runner(rt.model, tok2), model_name="eot", max_batch=2, max_context=64))
    try:
        r = other.client().chat.completions.create(model="eot", messages=MESSAGES, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == tok.decode(greedy[:stop_at], skip_special_tokens=True)
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == stop_at + 1
    finally:
        other.close()


def test_embeddings_equal_runner_embed(encoder):
    rt, live = encoder
    assert isinstance(live.engine, EmbedEngine)
    client = live.client()
    texts = ["the runner streams text", "héllo wörld", "a"]
    want = rt.embed(texts)
    r = client.embeddings.create(model="tiny-bert", input=texts)  # the client asks for base64
    assert torch.equal(torch.tensor([d.embedding for d in r.data]), want)
    assert [d.index for d in r.data] == [0, 1, 2] and r.usage.prompt_tokens > 3
    r = live.http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "héllo wörld",
                                               "encoding_format": "float"}).json()
    assert torch.equal(torch.tensor(r["data"][0]["embedding"]), rt.embed(["héllo wörld"])[0])
    # Requests that arrive together share a forward; each still gets its own rows.
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda t: client.embeddings.create(model="tiny-bert", input=[t, "a"]), PROMPTS[:8]))
    for t, r in zip(PROMPTS[:8], outs):
        torch.testing.assert_close(torch.tensor([d.embedding for d in r.data]), rt.embed([t, "a"]),
                                   rtol=0, atol=1e-6)


# ----- batching ---------------------------------------------------------------------------------------
@native
def test_16_concurrent_streams_each_get_their_own_tokens(decoder):
    rt, live = decoder
    lengths = [8 + 5 * i for i in range(16)]
    want = [rt.generate(p, n) for p, n in zip(PROMPTS, lengths)]
    before = live.metric("slimrt_batch_size_bucket")
    start = threading.Barrier(16)

    def one(i: int) -> tuple[str, int, str]:
        client = live.client()
        start.wait()
        stream = client.completions.create(model="tiny-chat", prompt=PROMPTS[i], max_tokens=lengths[i],
                                           temperature=0, stream=True, stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, usage, finish

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(16)))
    for i, (text, usage, finish) in enumerate(got):
        assert text == want[i], f"client {i}: {text!r} != alone {want[i]!r}"
        assert usage == lengths[i] and finish == "length"
    after = live.metric("slimrt_batch_size_bucket")
    single = after['{le="1.0"}'] - before.get('{le="1.0"}', 0)
    total = after['{le="+Inf"}'] - before.get('{le="+Inf"}', 0)
    assert total > single, "no decode step ran more than one row: the clients were not batched"


@native
def test_one_request_of_16_prompts_decodes_them_in_one_batch(decoder):
    rt, live = decoder
    lengths = [3 + i for i in range(16)]
    before = live.metric("slimrt_batch_size_bucket")
    r = live.http.post("/v1/completions", json={"model": "tiny-chat", "prompt": PROMPTS, "max_tokens": 18,
                                                "temperature": 0, "stop": None}).json()
    assert [c["text"] for c in r["choices"]] == [rt.generate(p, 18) for p in PROMPTS]
    after = live.metric("slimrt_batch_size_bucket")
    # All 16 rows were admitted together: decode steps with more than 12 rows ran.
    assert after['{le="+Inf"}'] - after['{le="12.0"}'] > before.get('{le="+Inf"}', 0) - before.get('{le="12.0"}', 0)
    del lengths


@native
def test_w8a8_model_prefills_eagerly_and_still_equals_runner(tmp_path):
    """Linears that run W8A8 at M > 1 (a w8a8 checkpoint): the runner prefills eagerly and decodes with
    the w8 step; the server does the same per row, so its greedy text is the runner's."""
    path = tmp_path / "w8a8"
    slimrt.save(to_int8(tiny_llama(3, vocab_size=300, initializer_range=0.2)), path, tokenizer=chat_tokenizer())
    rt = slimrt.load(path)
    assert rt.native is not None and rt.native.max_prefill == 1
    live = Live(serve_app(rt, model_name="m", max_batch=4, max_context=64))
    try:
        assert isinstance(live.engine, BatchEngine)
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: live.client().completions.create(
                model="m", prompt=p, max_tokens=10, temperature=0).choices[0].text, PROMPTS[:4]))
        assert got == [rt.generate(p, 10) for p in PROMPTS[:4]]
    finally:
        live.close()


def test_models_without_the_native_step_are_served_one_at_a_time(tmp_path):
    path = tmp_path / "dense"
    slimrt.save(tiny_llama(4, vocab_size=300, initializer_range=0.2), path, tokenizer=chat_tokenizer())
    rt = slimrt.load(path)
    assert rt.native is None
    live = Live(serve_app(rt, model_name="dense", max_batch=4, max_context=64))
    try:
        assert isinstance(live.engine, SerialEngine)
        card = live.client().models.list().data[0]
        assert card.id == "dense" and card.model_extra["slimrt"]["serving"] == "one at a time"
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda p: live.client().completions.create(
                model="dense", prompt=p, max_tokens=8, temperature=0).choices[0].text, PROMPTS[:3]))
        assert got == [rt.generate(p, 8) for p in PROMPTS[:3]]
        pieces = list(live.client().chat.completions.create(model="dense", messages=MESSAGES, max_tokens=8,
                                                            temperature=0, stream=True))
        assert "".join(p.choices[0].delta.content or "" for p in pieces) == rt.chat(MESSAGES, 8)
    finally:
        live.close()


# ----- bad input and overload --------------------------------------------------------------------------
def _error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["type"]
    for w in words:
        assert w in err["message"], (w, err["message"])
    return err


@native
def test_every_bad_request_gets_its_status_and_an_error_body(decoder, encoder):
    rt, live = decoder
    post = live.http.post
    ok = {"model": "tiny-chat", "prompt": "the runner", "max_tokens": 4, "temperature": 0}
    chat_ok = {"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 4}
    cases = [
        (post("/v1/completions", content=b'{"model": "tiny-chat", "prompt": '), 400, "not valid JSON"),
        (post("/v1/completions", content=b"[1, 2]"), 400, "JSON object"),
        (post("/v1/completions", json={**ok, "max_tokens": "5"}), 400, "max_tokens", "integer"),
        (post("/v1/completions", json={**ok, "temperature": "hot"}), 400, "temperature"),
        (post("/v1/completions", json={**ok, "temperature": 3}), 400, "temperature", "less than or equal to 2"),
        (post("/v1/completions", json={**ok, "stream": "yes"}), 400, "stream"),
        (post("/v1/completions", json={**ok, "seed": 1.5}), 400, "seed"),
        (post("/v1/completions", json={**ok, "seed": 1 << 64}), 400, "seed"),
        (post("/v1/completions", json={**ok, "stop": [1]}), 400, "stop"),
        (post("/v1/completions", json={**ok, "stop": ["a", "b", "c", "d", "e"]}), 400, "at most 4"),
        (post("/v1/completions", json={**ok, "prompt": 5}), 400, "prompt"),
        (post("/v1/completions", json={**ok, "prompt": [5, 300]}), 400, "prompt"),
        (post("/v1/completions", json={**ok, "n": 2}), 400, "n=2"),
        (post("/v1/completions", json={**ok, "logprobs": 2}), 400, "logprobs"),
        (post("/v1/completions", json={**ok, "colour": "red"}), 400, "Unrecognized request argument", "colour"),
        (post("/v1/completions", json={"prompt": "x"}), 400, "model is required"),
        (post("/v1/completions", json={**ok, "prompt": "the runner " * 100}), 400, "context of 128"),
        (post("/v1/completions", json={**ok, "max_tokens": 0}), 400, "max_tokens"),
        (post("/v1/completions", json={**ok, "max_tokens": -3}), 400, "max_tokens"),
        (post("/v1/completions", json={**ok, "max_tokens": 200}), 400, "max_tokens=200", "context of 128"),
        (post("/v1/completions", json={**ok, "model": "gpt-4"}), 404, "'gpt-4' is not served here"),
        (post("/v1/completions", json={**ok, "prompt": ""}), 400, "prompt has no tokens"),
        (post("/v1/chat/completions", json={**chat_ok, "messages": "hi"}), 400, "messages"),
        (post("/v1/chat/completions", json={**chat_ok, "messages": [{"role": "user", "content": "the runner " * 60}]}),
         400, "context of 128"),
        (post("/v1/chat/completions", json={**chat_ok, "messages": []}), 400, "messages is empty"),
        (post("/v1/chat/completions", json={**chat_ok, "messages": [{"role": "robot", "content": "x"}]}), 400,
         "messages.0.role"),
        (post("/v1/chat/completions", json={**chat_ok, "messages": [{"role": "user", "content": 3}]}), 400,
         "messages.0.content"),
        (post("/v1/chat/completions", json={**chat_ok, "tools": [{"type": "function"}]}), 400, "tools"),
        (post("/v1/embeddings", json={"model": "tiny-chat", "input": "x"}), 400, "needs an encoder",
         "/v1/completions"),
        (post("/v1/completions", content=b"x" * ((1 << 16) + 1)), 413, "bytes"),
        (live.http.get("/v1/completions"), 405),
        (live.http.get("/v1/nothing"), 404),
    ]
    for r, status, *words in cases:
        _error(r, status, *words)
        assert post("/v1/completions", json=ok).status_code == 200, "the server stopped answering"
    rt_e, live_e = encoder
    _error(live_e.http.post("/v1/chat/completions", json={**chat_ok, "model": "tiny-bert"}), 400, "needs a decoder")
    _error(live_e.http.post("/v1/embeddings", json={"model": "tiny-bert", "input": []}), 400, "input")
    _error(live_e.http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x" * 200}), 400, "tokens")
    _error(live_e.http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x", "dimensions": 8}), 400,
           "dimensions")
    assert live_e.http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"}).status_code == 200
    # The errors were counted by status.
    counts = live.metric("slimrt_requests_total")
    assert counts['{endpoint="completions",status="400"}'] >= 15 and counts['{endpoint="completions",status="413"}']


@native
def test_a_chat_tokenizer_without_template_is_a_400(decoder):
    rt, _ = decoder
    live = Live(serve_app(slimrt.Runner(rt.model, chat_tokenizer(template=None)), model_name="raw", max_batch=2,
                          max_context=64))
    try:
        _error(live.http.post("/v1/chat/completions", json={"model": "raw", "messages": MESSAGES}), 400,
               "no chat template")
        assert live.http.post("/v1/completions", json={"model": "raw", "prompt": "x"}).status_code == 200
    finally:
        live.close()


@native
def test_api_key(decoder):
    rt, _ = decoder
    live = Live(serve_app(rt, model_name="k", max_batch=2, max_context=64, api_key="sesame"))
    try:
        body = {"model": "k", "prompt": "x", "max_tokens": 2, "temperature": 0}
        _error(live.http.post("/v1/completions", json=body), 401, "API key")
        _error(live.http.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}), 401,
               "incorrect API key")
        _error(live.http.get("/v1/models", headers={"Authorization": "Basic sesame"}), 401)
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").models.list()
        assert live.client("sesame").completions.create(**body).choices[0].text == rt.generate("x", 2)
        assert live.http.get("/health").status_code == 200  # health and metrics stay open for probes
    finally:
        live.close()


def _wait_for(what, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@native
def test_a_full_queue_is_503_with_retry_after(long_decoder):
    rt = long_decoder
    live = Live(serve_app(rt, model_name="q", max_batch=1, max_queue=2, max_context=2048))
    try:
        engine = live.engine
        short = {"model": "q", "prompt": "héllo", "max_tokens": 5, "temperature": 0}
        # One request with more prompts than the queue holds: refused whole, nothing decoded.
        r = live.http.post("/v1/completions", json={**short, "prompt": ["a", "b", "c"]})
        _error(r, 503, "busy")
        assert r.headers["Retry-After"] == "1"
        # One long stream holds the only row, two wait for it: the queue is full.
        long = {**short, "prompt": "the runner", "max_tokens": 2000, "stream": True}
        with httpx.Client(base_url=live.url, timeout=60) as c, contextlib.ExitStack() as held:
            streams = [held.enter_context(c.stream("POST", "/v1/completions", json=long)) for _ in range(3)]
            assert [s.status_code for s in streams] == [200] * 3
            _wait_for("1 active and 2 waiting", lambda: (engine.active, engine.waiting) == (1, 2))
            for body in (short, {**short, "stream": True}):
                r = c.post("/v1/completions", json=body)
                _error(r, 503, "busy", "max_queue=2")
                assert r.headers["Retry-After"] == "1"
            assert (engine.active, engine.waiting) == (1, 2), "the long stream ended before the test was done"
        # The streams' clients left: their rows and places are freed, and the server answers again.
        _wait_for("an idle engine", lambda: (engine.active, engine.waiting) == (0, 0))
        r = live.client().completions.create(**short)
        assert r.choices[0].text == rt.generate("héllo", 5)
    finally:
        live.close()


@native
def test_a_client_that_disconnects_frees_its_row(long_decoder):
    rt = long_decoder
    live = Live(serve_app(rt, model_name="d", max_batch=2, max_context=2048))
    try:
        engine = live.engine
        body = {"model": "d", "prompt": "the runner", "max_tokens": 2000, "temperature": 0, "stream": True}
        with httpx.Client(base_url=live.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                events = _sse(next(lines) for _ in range(6))
                assert events and all(isinstance(e, dict) for e in events)
                assert engine.active == 1
        # ... and a request that goes away before its (non-streamed) answer
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(live.url + "/v1/completions", json={**body, "stream": False}, timeout=0.3)
        _wait_for("both rows to be freed", lambda: engine.active == 0 and
                  live.metric("slimrt_cancelled_sequences_total").get("", 0) >= 2)
        assert live.metric("slimrt_cancelled_sequences_total")[""] == 2, "a row ran to its end after its client left"
        r = live.client().completions.create(model="d", prompt="héllo", max_tokens=9, temperature=0)
        assert r.choices[0].text == rt.generate("héllo", 9)
    finally:
        live.close()


# ----- pieces ---------------------------------------------------------------------------------------------
def test_stop_text_cuts_before_a_stop_string_split_over_pieces():
    s = StopText(["</end>", "xyz"])
    out = [s.push(p) for p in ["hello </", "e", "nd> more"]]
    assert "".join(o for o, _ in out) == "hello " and out[-1][1] is True
    s = StopText(["</end>"])
    assert s.push("a <") == ("a ", False)  # "<" may begin the stop string: held back
    assert s.push("b") == ("<b", False)
    assert s.flush() == ""
    s = StopText([])
    assert s.push("abc") == ("abc", False)


def test_import_slimrt_loads_no_server_code():
    code = ("import sys, slimrt, slimrt.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'uvicorn', 'sse_starlette', 'prometheus_client', 'fastapi', 'openai') or "
            "m.startswith('slimrt.serve.')]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_serve_without_the_extra_says_what_to_install():
    code = ("import sys; sys.modules['sse_starlette'] = None; from slimrt.cli import main; "
            "sys.exit(main(['serve', 'no-such-checkpoint']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "pip install 'slimrt[serve]'" in r.stderr and "sse_starlette" in r.stderr, r.stderr


def test_app_arguments_are_checked(decoder):
    rt, _ = decoder
    with pytest.raises(ValueError, match="max_batch=0 must be an integer >= 1"):
        serve_app(rt, max_batch=0)
    with pytest.raises(ValueError, match="api_key must not be empty"):
        serve_app(rt, api_key="")


@native
def test_cli_serve_answers_on_its_port(decoder, tmp_path):
    rt, _ = decoder
    path = tmp_path / "ckpt"
    slimrt.save(rt.model, path, tokenizer=rt.tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "slimrt.cli", "serve", str(path), "--port", str(port),
                             "--max-batch", "2", "--max-context", "64", "--api-key", "k"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "slimrt serve did not start"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["ckpt"]
        r = c.completions.create(model="ckpt", prompt="the runner", max_tokens=6, temperature=0)
        assert r.choices[0].text == rt.generate("the runner", 6)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert "continuous batching, 2 rows of 64 tokens" in out, out


def test_embeddings_base64_is_little_endian_float32(encoder):
    rt, live = encoder
    r = live.http.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["a", "the runner"],
                                               "encoding_format": "base64"}).json()
    rows = [torch.frombuffer(bytearray(base64.b64decode(d["embedding"])), dtype=torch.float32) for d in r["data"]]
    assert torch.equal(torch.stack(rows), rt.embed(["a", "the runner"]))


# ----- the real model ----------------------------------------------------------------------------------
@native
@pytest.mark.slow
def test_smollm2_w8_served_equals_the_runner(tmp_path_factory):
    """SmolLM2-135M-Instruct (GGUF -> `slimrt compress --recipe w8`) behind the server: four concurrent
    chat streams, each greedy reply equal to Runner.chat's alone, one of them the answer "Paris"."""
    from test_gguf import smollm2_path

    from slimrt import cli

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-w8"
    assert cli.main(["compress", str(smollm2_path()), "-o", str(out), "--recipe", "w8", "--no-progress"]) == 0
    rt = slimrt.load(out)
    questions = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Say hello."]
    chats = [[{"role": "user", "content": q}] for q in questions]
    want = [rt.chat(m, max_new_tokens=24) for m in chats]
    assert "Paris" in want[0], want[0]
    live = Live(serve_app(rt, model_name="smollm2", max_batch=4, max_context=512))
    try:
        def one(m):
            stream = live.client().chat.completions.create(model="smollm2", messages=m, max_tokens=24, temperature=0,
                                                           stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream)

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one, chats)) == want
    finally:
        live.close()
