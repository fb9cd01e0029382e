"""The server's engines: worker threads that run the model for the requests the HTTP side hands them.

``BatchEngine`` (decoders with the native step): continuous batching over one session of ``rows``
cache rows, each row an independent sequence from slot 0. Every iteration admits waiting requests
into free rows, then makes one native ``run_rows`` call holding one token of every decoding row and
the next prompt chunk of rows still prefilling (at most ``prefill_chunk`` prompt tokens, so a long
prompt delays the others' next token by one bounded chunk), samples per request and retires rows
that hit an end token, ``max_tokens`` or a cancellation. A row's numbers do not depend on which
other rows share its call (the w8 kernel gives a row the same bits at every M), so greedy output
equals the request run alone through ``Runner.generate``. Models whose M = T calls run W8A8 eagerly
(``native.max_prefill`` below the prompt length) prefill that row with the eager forward, as the
Runner does, and decode natively with the rest.

``SerialEngine`` (decoders without the native step: dense or low-rank layers, sliding-window
models, the scalar ISA) runs one request at a time through the Runner's own token loop.
``EmbedEngine`` (encoders): the embedding requests waiting together share one ``Runner.embed``.

The HTTP side lives on an asyncio loop and must never wait on a kernel: it submits ``Sequence``s,
and engines hand events back through ``loop.call_soon_threadsafe`` (one call per loop per
iteration). A ``Sequence`` that its client abandons is marked ``cancelled`` and its row is freed at
the next iteration. An error in a model call fails the requests of that call only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimrt.models._common import Batch
from slimrt.runner import Runner, sample

log = logging.getLogger("slimrt.serve")

# Events sent to a request's asyncio queue: ("token", index, token id), ("done", index, finish reason
# "stop" | "length"), ("error", index, message), ("embeddings", 0, Tensor).
Event = tuple[str, int, Any]


class QueueFull(Exception):
    """The engine's wait queue is full: the caller answers 503 and the client retries later."""


class EngineStopped(Exception):
    """The engine is not running (shut down, or its worker thread died)."""


@dataclass(eq=False)
class Sequence:
    """One prompt to decode, and where its events go. ``index``: its choice index in the request."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None
    stop_ids: frozenset[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int = 0
    cancelled: bool = False  # set by the HTTP side (client gone, stop string seen); read by the engine
    # Engine state.
    row: int = -1
    fed: int = 0  # prompt tokens in the cache
    generated: int = 0  # tokens sampled
    last: int = -1  # the latest sampled token: the next call's input
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class EmbedJob:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class _Worker:
    """A worker thread over a wait queue; subclasses implement ``_iteration``."""

    name = "engine"

    def __init__(self, runner: Runner, max_queue: int, threads: int | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue} must be >= 1")
        self.runner = runner
        self.max_queue = max_queue
        # torch.set_num_threads is per thread under OpenMP: the worker takes the caller's count.
        self.threads = threads or torch.get_num_threads()
        self._waiting: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._events: list[tuple[Any, Event]] = []
        self.error: str | None = None  # why the worker thread died, if it did
        self.on_step: Callable[[int, int, float], None] | None = None  # (rows, tokens, seconds) per model call
        self.on_cancel: Callable[[], None] | None = None  # a sequence stopped early (client gone, stop string)

    # ----- the HTTP side -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return 0

    def submit(self, items: list) -> None:
        """Queues items (Sequences or EmbedJobs); QueueFull if they do not fit, EngineStopped if not running."""
        with self._cv:
            if not self.alive:
                raise EngineStopped(self.error or "the engine is not running")
            if len(self._waiting) + len(items) > self.max_queue:  # abandoned ones first make room
                self._waiting = collections.deque(x for x in self._waiting if not x.cancelled)
            if len(self._waiting) + len(items) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue={self.max_queue})")
            self._waiting.extend(items)
            self._cv.notify()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"slimrt-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._has_work():
                        self._cv.wait()
                    if self._stop:
                        break
                self._iteration()
                self._flush()
        except BaseException as e:  # a bug in the engine itself: say so on /health and to every request
            self.error = f"the engine stopped: {type(e).__name__}: {e}"
            log.exception("slimrt serve: engine thread died")
        finally:
            with self._cv:
                self._stop = True
                pending = list(self._waiting) + self._in_flight()
                self._waiting.clear()
            for item in pending:
                self._emit(item, ("error", getattr(item, "index", 0), self.error or "the server is shutting down"))
            self._flush()

    def _has_work(self) -> bool:
        return bool(self._waiting)

    def _in_flight(self) -> list:
        return []

    def _iteration(self) -> None:
        raise NotImplementedError

    def _emit(self, item: Any, event: Event) -> None:
        self._events.append((item, event))

    def _flush(self) -> None:
        """Hands this iteration's events to their loops: one thread-safe call per loop."""
        by_loop: dict[Any, list] = {}
        for item, event in self._events:
            by_loop.setdefault(item.loop, []).append((item.queue, event))
        self._events = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed: its server is gone
                pass

    def _pop_waiting(self) -> Any | None:
        with self._cv:
            while self._waiting:
                item = self._waiting.popleft()
                if not item.cancelled:
                    return item
                self._cancelled()
        return None

    def _cancelled(self) -> None:
        if self.on_cancel is not None:
            self.on_cancel()


def _generator(seed: int | None) -> torch.Generator:
    # A generator per request: concurrent requests never draw from one another's stream, and a seeded
    # request draws exactly what Runner.generate(..., seed=seed) draws.
    return torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)


def _sample(seq: Sequence, logits: Tensor, greedy: int | None) -> int:
    """The next token of ``seq`` from its logits (1, V): Runner's ``sample`` with the request's settings."""
    if seq.temperature == 0:
        return int(greedy) if greedy is not None else int(logits.argmax(dim=-1)[0])
    if seq.generator is None:
        seq.generator = _generator(seq.seed)
    return int(sample(logits, seq.temperature, None, seq.top_p, seq.generator)[0])


class BatchEngine(_Worker):
    """Continuous batching over ``rows`` cache rows of ``max_len`` slots (see the module docstring)."""

    name = "batch"

    def __init__(self, runner: Runner, rows: int = 16, max_len: int = 2048, max_queue: int = 64,
                 prefill_chunk: int = 512, threads: int | None = None) -> None:
        super().__init__(runner, max_queue, threads)
        if runner.native is None:
            raise ValueError(f"BatchEngine needs the native decode step; this model has none: {runner.native_reason}")
        if rows < 1 or max_len < 2 or prefill_chunk < 1:
            raise ValueError(f"BatchEngine: rows={rows}, max_len={max_len} and prefill_chunk={prefill_chunk} "
                             "must be >= 1, >= 2 and >= 1")
        lean = runner.lean
        self.rows, self.max_len, self.prefill_chunk = rows, max_len, prefill_chunk
        self.cache = lean.new_cache(rows, max_len)
        # Every row holds its own sequence from slot 0: slot j is position j in every row.
        self.positions = lean.prepare(Batch.left_padded([max_len] * rows, max_len, torch.device("cpu")))
        self.session = runner.native.session(self.cache, self.positions, max_len, any_batch=True)
        if self.session is None:
            raise ValueError("BatchEngine: the native step cannot open a session here (the scalar ISA with fused "
                             "weights, or a cache it does not serve)")
        self.max_prefill = runner.native.max_prefill  # longer prompts prefill eagerly, as Runner.generate does
        self._free = list(range(rows - 1, -1, -1))
        self._live: list[Sequence] = []  # holding a row, in admission order

    @property
    def active(self) -> int:
        return len(self._live)

    def kv_bytes(self) -> int:
        return self.cache.nbytes()

    def _has_work(self) -> bool:
        return bool(self._live) or (bool(self._waiting) and bool(self._free))

    def _in_flight(self) -> list:
        live, self._live = self._live, []
        return live

    def _retire(self, seq: Sequence) -> None:
        self._live.remove(seq)
        self._free.append(seq.row)
        seq.row = -1

    def _took(self, seq: Sequence, token: int) -> None:
        """Records a sampled token, emits it, and retires the row when it ends the sequence."""
        seq.generated += 1
        seq.last = token
        self._emit(seq, ("token", seq.index, token))
        if token in seq.stop_ids:
            self._emit(seq, ("done", seq.index, "stop"))
            self._retire(seq)
        elif seq.generated >= seq.max_tokens:
            self._emit(seq, ("done", seq.index, "length"))
            self._retire(seq)

    def _fail(self, seqs: list[Sequence], e: BaseException) -> None:
        log.exception("slimrt serve: a model call failed; failing its %d requests", len(seqs))
        for seq in seqs:
            self._emit(seq, ("error", seq.index, f"the model call failed: {type(e).__name__}: {e}"))
            if seq in self._live:
                self._retire(seq)

    def _iteration(self) -> None:
        for seq in [s for s in self._live if s.cancelled]:
            self._retire(seq)
            self._cancelled()
        while self._free:
            seq = self._pop_waiting()
            if seq is None:
                break
            seq.row = self._free.pop()
            seq.fed = seq.generated = 0
            self._live.append(seq)
        # Prompts the native step may not prefill (M = T runs W8A8 in the eager forward): eagerly, whole.
        for seq in [s for s in self._live if s.fed == 0 and len(s.prompt) > self.max_prefill]:
            try:
                logits = self._eager_prefill(seq)
            except Exception as e:  # noqa: BLE001 - one request's failure must not stop the server
                self._fail([seq], e)
                continue
            seq.fed = len(seq.prompt)
            self._took(seq, _sample(seq, logits, None))
        tokens: list[int] = []
        rows: list[int] = []
        slots: list[int] = []
        out: list[int] = []
        sampled: list[Sequence] = []
        decoding = [s for s in self._live if s.fed == len(s.prompt)]
        for seq in decoding:  # one token each, at its own slot
            out.append(len(tokens))
            sampled.append(seq)
            tokens.append(seq.last)
            rows.append(seq.row)
            slots.append(len(seq.prompt) + seq.generated - 1)
        budget = self.prefill_chunk
        for seq in self._live:
            if budget == 0:
                break
            if seq.fed == len(seq.prompt):
                continue
            n = min(budget, len(seq.prompt) - seq.fed)
            tokens += seq.prompt[seq.fed:seq.fed + n]
            rows += [seq.row] * n
            slots += range(seq.fed, seq.fed + n)
            seq.fed += n
            budget -= n
            if seq.fed == len(seq.prompt):  # this chunk ends the prompt: its last position samples
                out.append(len(tokens) - 1)
                sampled.append(seq)
        if not tokens:
            return
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                logits, greedy = self.session.run_rows(torch.tensor(tokens), torch.tensor(rows), torch.tensor(slots),
                                                       torch.tensor(out, dtype=torch.long), self.threads)
        except Exception as e:  # noqa: BLE001 - fails this call's requests, the server goes on
            in_call = set(rows)
            self._fail([s for s in self._live if s.row in in_call], e)
            return
        if self.on_step is not None:
            self.on_step(len(decoding), len(tokens), time.perf_counter() - t0)
        greedy_ids = greedy.tolist()
        for j, seq in enumerate(sampled):
            try:
                with torch.inference_mode():
                    token = _sample(seq, logits[j:j + 1], greedy_ids[j])
            except Exception as e:  # noqa: BLE001 - e.g. NaN probabilities: this request only
                self._fail([seq], e)
                continue
            self._took(seq, token)

    def _eager_prefill(self, seq: Sequence) -> Tensor:
        lean = self.runner.lean
        b = seq.row
        pos = tuple(t[b:b + 1] for t in self.positions) if isinstance(self.positions, tuple) else \
            self.positions[b:b + 1]
        with torch.inference_mode():
            return lean.forward(torch.tensor([seq.prompt]), pos, self.cache.row(b), 0, None, True)


class SerialEngine(_Worker):
    """One request at a time through the Runner's token loop (models without the native step)."""

    name = "serial"

    def __init__(self, runner: Runner, max_queue: int = 64, threads: int | None = None) -> None:
        super().__init__(runner, max_queue, threads)
        self._current: Sequence | None = None

    @property
    def active(self) -> int:
        return int(self._current is not None)

    def _in_flight(self) -> list:
        return [self._current] if self._current is not None else []

    def _iteration(self) -> None:
        seq = self._pop_waiting()
        if seq is None:
            return
        self._current = seq
        try:
            reason = "length"
            steps = self.runner._token_loop([seq.prompt], seq.max_tokens, seq.temperature, None, seq.top_p,
                                            seq.seed, True, None, seq.stop_ids)
            t0 = time.perf_counter()
            for tokens in steps:
                token = int(tokens[0])
                seq.generated += 1
                if self.on_step is not None:
                    self.on_step(1, 1, time.perf_counter() - t0)
                self._emit(seq, ("token", seq.index, token))
                self._flush()
                t0 = time.perf_counter()
                if token in seq.stop_ids:
                    reason = "stop"
                    break
                if seq.cancelled or self._stop:
                    self._cancelled()
                    break
            self._emit(seq, ("done", seq.index, reason))
        except Exception as e:  # noqa: BLE001 - one request's failure must not stop the server
            log.exception("slimrt serve: a request failed")
            self._emit(seq, ("error", seq.index, f"the model call failed: {type(e).__name__}: {e}"))
        finally:
            self._current = None


class EmbedEngine(_Worker):
    """Embedding requests waiting together share one ``Runner.embed`` (up to ``max_texts`` texts)."""

    name = "embed"

    def __init__(self, runner: Runner, max_queue: int = 64, max_texts: int = 256, threads: int | None = None) -> None:
        super().__init__(runner, max_queue, threads)
        self.max_texts = max_texts
        self._current: list[EmbedJob] = []

    @property
    def active(self) -> int:
        return len(self._current)

    def _in_flight(self) -> list:
        return list(self._current)

    def _iteration(self) -> None:
        jobs: list[EmbedJob] = []
        n = 0
        with self._cv:  # whole requests, at least one, until max_texts
            while self._waiting and (not jobs or n + len(self._waiting[0].texts) <= self.max_texts):
                job = self._waiting.popleft()
                if not job.cancelled:
                    jobs.append(job)
                    n += len(job.texts)
        if not jobs:
            return
        self._current = jobs
        t0 = time.perf_counter()
        try:
            emb = self.runner.embed([t for job in jobs for t in job.texts])
        except Exception as e:  # noqa: BLE001
            log.exception("slimrt serve: an embedding call failed")
            for job in jobs:
                self._emit(job, ("error", 0, f"the model call failed: {type(e).__name__}: {e}"))
            return
        finally:
            self._current = []
        if self.on_step is not None:
            self.on_step(len(jobs), n, time.perf_counter() - t0)
        start = 0
        for job in jobs:
            self._emit(job, ("embeddings", 0, emb[start:start + len(job.texts)]))
            start += len(job.texts)


def make_engine(runner: Runner, *, max_batch: int = 16, max_context: int = 2048, max_queue: int = 64,
                prefill_chunk: int = 512) -> _Worker:
    """The engine for this model: EmbedEngine (encoders), BatchEngine (decoders with the native step,
    rows = max_batch, each of min(model context, max_context) slots), else SerialEngine."""
    if runner.kind == "encoder":
        return EmbedEngine(runner, max_queue)
    max_len = min(runner.lean.max_positions, max_context)
    if runner.native is not None:
        try:
            return BatchEngine(runner, max_batch, max_len, max_queue, prefill_chunk)
        except ValueError as e:
            log.warning("slimrt serve: %s; serving one request at a time", e)
    return SerialEngine(runner, max_queue)


__all__ = ["BatchEngine", "EmbedEngine", "EmbedJob", "EngineStopped", "QueueFull", "Sequence", "SerialEngine",
           "make_engine"]
