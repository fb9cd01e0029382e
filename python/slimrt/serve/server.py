"""The ASGI app: OpenAI's HTTP API over a Runner, on Starlette (SSE through sse-starlette, metrics
through prometheus-client). ``build_app(runner, ...)`` is what ``slimrt.serve.app`` returns.

Everything that runs the model happens on the engine's thread (engine.py); tokenizing a prompt runs
in Starlette's thread pool; the event loop only parses, checks, detokenizes and writes. A request
is checked whole before it is queued, so a bad one is refused with an OpenAI-style error body and
never reaches the model.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slimrt import chat
from slimrt.runner import Detokenizer, Runner
from slimrt.serve import api
from slimrt.serve.api import ApiError
from slimrt.serve.engine import (
    BatchEngine, EmbedEngine, EmbedJob, EngineStopped, QueueFull, Sequence, make_engine,
)

log = logging.getLogger("slimrt.serve")

DEFAULT_MAX_BODY = 4 << 20  # bytes: 2048 embedding inputs of ~2 kB, or a prompt far past any context
RETRY_AFTER_S = 1


class Metrics:
    """The Prometheus metrics of one app (its own registry: two apps in a process do not collide)."""

    def __init__(self, engine: Any) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("slimrt_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("slimrt_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.generation_tokens = Counter("slimrt_generation_tokens", "Tokens generated", registry=r)
        self.embedded = Counter("slimrt_embedded_texts", "Texts embedded", registry=r)
        self.cancelled = Counter("slimrt_cancelled_sequences", "Sequences stopped early: the client left, or a stop "
                                 "string ended the text", registry=r)
        queue = Gauge("slimrt_queue_depth", "Sequences (or embedding requests) waiting for the engine", registry=r)
        queue.set_function(lambda: engine.waiting)
        active = Gauge("slimrt_active_sequences", "Sequences holding a batch row (or requests being embedded)",
                       registry=r)
        active.set_function(lambda: engine.active)
        self.batch = Histogram("slimrt_batch_size", "Decoding rows per model call (requests per embedding call)",
                               buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), registry=r)
        self.step_tokens = Histogram("slimrt_step_tokens", "Tokens per model call (decode + prefill; texts)",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=r)
        self.step_seconds = Histogram("slimrt_step_seconds", "Wall time of one model call",
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.latency = Histogram("slimrt_request_seconds", "Request latency, arrival to last byte", ["endpoint"],
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.ttft = Histogram("slimrt_time_to_first_token_seconds", "Arrival to the first generated token",
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.itl = Histogram("slimrt_inter_token_seconds", "Time between two tokens of one sequence",
                             buckets=(.001, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28), registry=r)
        engine.on_step = self.step
        engine.on_cancel = self.cancelled.inc

    def step(self, rows: int, tokens: int, seconds: float) -> None:
        if rows:
            self.batch.observe(rows)
        self.step_tokens.observe(tokens)
        self.step_seconds.observe(seconds)


class StopText:
    """Text pieces in, text pieces out, cut before the first ``stop`` string; a tail that may be the
    start of a stop string is held back until the next piece decides it."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.sent = stops, "", 0

    def push(self, piece: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop string was reached)."""
        self.text += piece
        if not self.stops:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out, False
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            out, self.sent = self.text[self.sent:min(hits)], len(self.text)
            return out, True
        keep = 0  # the longest tail that begins some stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), keep, -1):
                if self.text.endswith(s[:k]):
                    keep = k
                    break
        end = len(self.text) - keep
        out, self.sent = self.text[self.sent:end], end
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


class Choice:
    """One sequence's output as the client sees it: text (cut at stop strings), finish reason, count."""

    def __init__(self, seq: Sequence, tokenizer: Any, stops: list[str]) -> None:
        self.seq, self.detok, self.stop = seq, Detokenizer(tokenizer), StopText(stops)
        self.text, self.tokens, self.finish = "", 0, None
        self.error: str | None = None
        self.last_t: float | None = None

    def token(self, token: int) -> str:
        self.tokens += 1
        if token in self.seq.stop_ids:  # an end token is counted, never shown (as Runner.generate)
            return ""
        out, hit = self.stop.push(self.detok.push(token))
        if hit:
            self.finish = "stop"
            self.seq.cancel()  # the engine frees the row at its next step
        self.text += out
        return out

    def done(self, reason: str) -> str:
        out, hit = self.stop.push(self.detok.flush())
        out += "" if hit else self.stop.flush()
        self.finish = "stop" if hit else reason
        self.text += out
        return out


class Server:
    """The app's state: runner, engine, a tokenizer of its own, limits and metrics."""

    def __init__(self, runner: Runner, model_name: str, max_batch: int, max_queue: int, max_context: int,
                 api_key: str | None, max_body: int, prefill_chunk: int) -> None:
        self.runner, self.model_name, self.api_key, self.max_body = runner, model_name, api_key, max_body
        self.engine = make_engine(runner, max_batch=max_batch, max_context=max_context, max_queue=max_queue,
                                  prefill_chunk=prefill_chunk)
        self.metrics = Metrics(self.engine)
        self.created = int(time.time())
        # Its own tokenizer: the engine's Runner.embed sets truncation on the runner's, and a Rust
        # tokenizer whose settings change under a concurrent call raises "Already borrowed".
        self.tokenizer = copy.deepcopy(runner.tokenizer)
        self._tok_lock = threading.Lock()
        if runner.kind == "decoder":
            self.context = min(runner.lean.max_positions, max_context)  # the BatchEngine's rows are this long
        else:
            self.context = runner.max_seq_length
        self.mode = {BatchEngine: "batched", EmbedEngine: "embeddings"}.get(type(self.engine), "one at a time")
        # The ids that end a reply, found once (the chat set reads the whole vocabulary): a completion
        # ends at the model's EOS as Runner.generate's does, a chat turn also at end-of-turn tokens.
        self.eos_ids: set[int] = set()
        self.chat_stop_ids: set[int] = set()
        if runner.kind == "decoder":
            self.eos_ids = runner._eos_ids()
            self.chat_stop_ids = chat.end_of_turn_ids(self.tokenizer, runner.lean.vocab_size, self.eos_ids)

    def describe(self) -> str:
        rt = self.runner
        if isinstance(self.engine, BatchEngine):
            return (f"{self.model_name}: continuous batching, {self.engine.rows} rows of {self.context} tokens "
                    f"(KV cache {self.engine.kv_bytes() / 2**30:.2f} GiB, touched as used)")
        if rt.kind == "decoder":
            return f"{self.model_name}: one request at a time (no native decode step: {rt.native_reason})"
        return f"{self.model_name}: embeddings, requests that wait together share a forward"

    # ----- checks -------------------------------------------------------------------------------
    def auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "no API key: send it as the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        if not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    async def body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise ApiError(413, f"the request body is {int(length)} bytes; at most {self.max_body}")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > self.max_body:
                raise ApiError(413, f"the request body is over {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ApiError(404, f"the model {model!r} is not served here; this server serves {self.model_name!r}",
                           "model", code="model_not_found")

    def need(self, kind: str, endpoint: str) -> None:
        if self.runner.kind != kind:
            other = {"encoder": "use /v1/embeddings", "decoder": "use /v1/completions and /v1/chat/completions"}.get(
                self.runner.kind, "slimrt serve serves encoders and decoders")
            model_type = getattr(self.runner.config, "model_type", None) or type(self.runner.model).__name__
            raise ApiError(400, f"{endpoint} needs {'a decoder' if kind == 'decoder' else 'an encoder'}; "
                                f"{self.model_name} is a {model_type} {self.runner.kind}: {other}", "model")
        if self.tokenizer is None:
            raise ApiError(400, f"{endpoint} needs a tokenizer, and this checkpoint has none", "model")

    def encode(self, texts: list[str], special: bool = True) -> list[list[int]]:
        with self._tok_lock:
            return [list(self.tokenizer(t, add_special_tokens=special)["input_ids"]) for t in texts]

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tok_lock:
            return chat.prompt_ids(self.tokenizer, messages)

    def budget(self, prompts: list[list[int]], max_tokens: int | None, default: int | None, param: str,
               prompt_param: str) -> int:
        """max_tokens for these prompts: checked against the context, or the default capped by what is left."""
        longest = max(len(p) for p in prompts)
        if any(len(p) == 0 for p in prompts):
            raise ApiError(400, f"{prompt_param} has no tokens", prompt_param)
        if longest >= self.context:
            raise ApiError(400, f"the prompt is {longest} tokens, which leaves no room for a reply in the context "
                                f"of {self.context} tokens", prompt_param, code="context_length_exceeded")
        room = self.context - longest
        if max_tokens is None:
            return room if default is None else min(default, room)
        if max_tokens > room:
            raise ApiError(400, f"{param}={max_tokens} with a {longest}-token prompt runs past the context of "
                                f"{self.context} tokens (at most {room})", param, code="context_length_exceeded")
        return max_tokens


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _endpoint(srv: Server, name: str, fn: Callable[[Request], Awaitable[Response]]) -> Callable:
    """Wraps a handler: ApiError -> its status and body; anything else -> 500 (logged); metrics."""
    async def handler(request: Request) -> Response:
        t0 = time.perf_counter()
        request.state.t0 = t0
        try:
            response = await fn(request)
        except ApiError as e:
            response = _error(e)
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down
            log.exception("slimrt serve: %s failed", name)
            response = _error(ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))
        srv.metrics.requests.labels(name, str(response.status_code)).inc()
        if not isinstance(response, EventSourceResponse):  # a stream observes its latency when it ends
            srv.metrics.latency.labels(name).observe(time.perf_counter() - t0)
        return response
    return handler


def _new_sequences(srv: Server, prompts: list[list[int]], max_tokens: int, body: Any, stop_ids: set[int],
                   queue: asyncio.Queue) -> list[Sequence]:
    loop = asyncio.get_running_loop()
    return [Sequence(prompt=p, max_tokens=max_tokens, temperature=float(body.temperature),
                     top_p=None if body.top_p >= 1 else float(body.top_p), seed=body.seed,
                     stop_ids=frozenset(stop_ids), loop=loop, queue=queue, index=i) for i, p in enumerate(prompts)]


def _submit(srv: Server, items: list) -> None:
    try:
        srv.engine.submit(items)
    except QueueFull as e:
        raise ApiError(503, f"the server is busy ({e}); retry shortly", type="server_busy",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except EngineStopped as e:
        raise ApiError(503, f"the server cannot take requests: {e}", type="server_error") from None


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is read already: receive() waits for that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _choice_events(srv: Server, request: Request, queue: asyncio.Queue,
                         choices: list[Choice]) -> AsyncIterator[tuple[Choice, str]]:
    """(choice, new text) as tokens arrive, until every choice has finished; ApiError(500) on an engine error."""
    t0 = request.state.t0
    while any(c.finish is None for c in choices):
        kind, index, payload = await queue.get()
        c = choices[index]
        if c.finish is not None:  # tokens already in flight after a stop string
            continue
        if kind == "error":
            for other in choices:
                other.seq.cancel()
            raise ApiError(500, payload, type="server_error")
        if kind == "token":
            now = time.perf_counter()
            if c.last_t is None:
                srv.metrics.ttft.observe(now - t0)
            else:
                srv.metrics.itl.observe(now - c.last_t)
            c.last_t = now
            srv.metrics.generation_tokens.inc()
            text = c.token(int(payload))
        else:
            text = c.done(payload)
        yield c, text


def _usage(prompts: list[list[int]], choices: list[Choice]) -> dict[str, int]:
    p, c = sum(len(x) for x in prompts), sum(ch.tokens for ch in choices)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _generate(srv: Server, request: Request, body: Any, prompts: list[list[int]], max_tokens: int,
                    stop_ids: set[int], stops: list[str], is_chat: bool) -> Response:
    """Queues one sequence per prompt and answers with the whole result, or streams it."""
    queue: asyncio.Queue = asyncio.Queue()
    seqs = _new_sequences(srv, prompts, max_tokens, body, stop_ids, queue)
    _submit(srv, seqs)
    srv.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
    choices = [Choice(s, srv.tokenizer, stops) for s in seqs]
    rid = f"{'chatcmpl' if is_chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {"id": rid, "object": "chat.completion.chunk" if is_chat else "text_completion",
            "created": int(time.time()), "model": srv.model_name}
    if body.stream:
        return EventSourceResponse(_stream(srv, request, body, prompts, queue, choices, head, is_chat),
                                   ping=15, send_timeout=60)
    events = _choice_events(srv, request, queue, choices)

    async def collect() -> None:
        async for _ in events:
            pass

    work = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # the client left: free its rows
            work.cancel()
            for s in seqs:
                s.cancel()
    if not work.done() or work.cancelled():
        return Response(status_code=499)
    work.result()  # raises the engine's ApiError, if any
    if is_chat:
        out = [{"index": c.seq.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                "finish_reason": c.finish} for c in choices]
    else:
        out = [{"index": c.seq.index, "text": c.text, "logprobs": None, "finish_reason": c.finish} for c in choices]
    return JSONResponse({**head, "object": "chat.completion" if is_chat else "text_completion", "choices": out,
                         "usage": _usage(prompts, choices)})


async def _stream(srv: Server, request: Request, body: Any, prompts: list[list[int]], queue: asyncio.Queue,
                  choices: list[Choice], head: dict, is_chat: bool) -> AsyncIterator[dict[str, str]]:
    """OpenAI's chunks as server-sent events, then ``[DONE]``. Cancelled when the client disconnects
    (sse-starlette), which frees the rows in ``finally``."""
    usage = body.stream_options is not None and body.stream_options.include_usage
    extra = {"usage": None} if usage else {}

    def chunk(c: Choice, text: str | None, finish: str | None) -> dict[str, str]:
        if is_chat:
            delta = {} if text is None else ({"role": "assistant", "content": text} if c.tokens == 0 and not finish
                                             else {"content": text})
            choice = {"index": c.seq.index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": c.seq.index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"data": json.dumps({**head, "choices": [choice], **extra})}

    try:
        if is_chat:  # the role first, as OpenAI sends it
            for c in choices:
                yield chunk(c, "", None)
        try:
            async for c, text in _choice_events(srv, request, queue, choices):
                if text:
                    yield chunk(c, text, None)
                if c.finish is not None:
                    yield chunk(c, None if is_chat else "", c.finish)
        except ApiError as e:
            yield {"data": json.dumps(e.body())}
            return
        if usage:
            yield {"data": json.dumps({**head, "choices": [], "usage": _usage(prompts, choices)})}
        yield {"data": "[DONE]"}
    finally:
        for c in choices:
            c.seq.cancel()  # a no-op for finished rows; frees the rows of a client that left
        srv.metrics.latency.labels("chat" if is_chat else "completions").observe(time.perf_counter() - request.state.t0)


def build_app(runner: Runner, *, model_name: str = "slimrt", max_batch: int = 16, max_queue: int = 64,
              max_context: int = 2048, api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY,
              prefill_chunk: int = 512) -> Starlette:
    srv = Server(runner, model_name, max_batch, max_queue, max_context, api_key, max_body, prefill_chunk)

    async def generation_request(request: Request, schema: type, endpoint: str):
        """The checks both generation endpoints share: the key, the body, the model, the options."""
        srv.auth(request)
        body = api.parse(schema, await srv.body(request))
        srv.check_model(body.model)
        srv.need("decoder", endpoint)
        api.check_generation(body)
        return body, api.stop_strings(body.stop)

    async def chat_completions(request: Request) -> Response:
        body, stops = await generation_request(request, api.ChatBody, "/v1/chat/completions")
        messages = api.chat_messages(body.messages)
        try:
            ids = await run_in_threadpool(srv.chat_ids, messages)
        except chat.ChatTemplateError as e:
            raise ApiError(400, str(e), "messages") from None
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = srv.budget([ids], body.max_completion_tokens or body.max_tokens, None, param, "messages")
        return await _generate(srv, request, body, [ids], max_tokens, srv.chat_stop_ids, stops, True)

    async def completions(request: Request) -> Response:
        body, stops = await generation_request(request, api.CompletionBody, "/v1/completions")
        given = api.completion_prompts(body.prompt, runner.lean.vocab_size)
        texts = [p for p in given if isinstance(p, str)]
        encoded = iter(await run_in_threadpool(srv.encode, texts) if texts else [])
        prompts = [next(encoded) if isinstance(p, str) else p for p in given]
        max_tokens = srv.budget(prompts, body.max_tokens, 16, "max_tokens", "prompt")  # 16: OpenAI's default
        return await _generate(srv, request, body, prompts, max_tokens, srv.eos_ids, stops, False)

    async def embeddings(request: Request) -> Response:
        srv.auth(request)
        body = api.parse(api.EmbeddingBody, await srv.body(request))
        srv.check_model(body.model)
        srv.need("encoder", "/v1/embeddings")
        texts = api.embedding_inputs(body.input)
        dim = runner.config.hidden_size
        if body.dimensions is not None and body.dimensions != dim:
            raise ApiError(400, f"dimensions={body.dimensions}: this model's embeddings have {dim}", "dimensions")
        counts = [len(ids) for ids in await run_in_threadpool(srv.encode, texts)]
        longest = max(counts)
        if longest > srv.context:
            i = counts.index(longest)
            raise ApiError(400, f"input {i} is {longest} tokens; this model reads at most {srv.context}", "input",
                           code="context_length_exceeded")
        queue: asyncio.Queue = asyncio.Queue()
        job = EmbedJob(texts, asyncio.get_running_loop(), queue)
        _submit(srv, [job])
        try:
            kind, _, payload = await queue.get()
        finally:
            job.cancel()
        if kind == "error":
            raise ApiError(500, payload, type="server_error")
        srv.metrics.embedded.inc(len(texts))
        srv.metrics.prompt_tokens.inc(sum(counts))
        arr = payload.numpy().astype("<f4", copy=False)
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(row.tobytes()).decode() if body.encoding_format == "base64"
                 else row.tolist()} for i, row in enumerate(arr)]
        return JSONResponse({"object": "list", "data": data, "model": srv.model_name,
                             "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}})

    def model_card() -> dict[str, Any]:
        return {"id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "slimrt",
                "slimrt": {"kind": runner.kind, "serving": srv.mode, "context": srv.context,
                           "max_batch": srv.engine.rows if isinstance(srv.engine, BatchEngine) else 1,
                           "native_step": runner.native_reason or "yes"}}

    async def models(request: Request) -> Response:
        srv.auth(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        srv.auth(request)
        srv.check_model(request.path_params["model"])
        return JSONResponse(model_card())

    async def health(request: Request) -> Response:
        ok = srv.engine.alive
        return JSONResponse({"status": "ok" if ok else "error", "serving": srv.mode, "waiting": srv.engine.waiting,
                             "active": srv.engine.active, **({} if ok else {"error": srv.engine.error})},
                            status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind,
                               headers=dict(exc.headers or {})))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        srv.engine.start()
        log.info("slimrt serve: %s", srv.describe())
        try:
            yield
        finally:
            await run_in_threadpool(srv.engine.stop)

    routes = [
        Route("/v1/chat/completions", _endpoint(srv, "chat", chat_completions), methods=["POST"]),
        Route("/v1/completions", _endpoint(srv, "completions", completions), methods=["POST"]),
        Route("/v1/embeddings", _endpoint(srv, "embeddings", embeddings), methods=["POST"]),
        Route("/v1/models", _endpoint(srv, "models", models), methods=["GET"]),
        Route("/v1/models/{model:path}", _endpoint(srv, "models", model), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.server = srv
    return app


__all__ = ["build_app", "Server", "StopText"]
