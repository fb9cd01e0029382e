"""Embeddings on Ray Data: ``embed`` (a Dataset in, a Dataset out) and ``embed_corpus`` (``slimrt
embed --input ... --ray``, the restartable shard plan of slimrt.corpus on an actor pool).

The pool is ``map_batches`` over ``ActorPoolStrategy(size=workers)``: each actor loads the
checkpoint once, sets ``threads_per_worker`` torch threads and reserves as many CPUs, then embeds
batch after batch. Ray Data restarts an actor that dies and retries the batch it held (its actors
default to ``max_restarts=-1``, ``max_task_retries=-1``), so a lost worker costs time, not rows.

``embed_corpus`` keeps the corpus file and the output on the driver: it reads each missing shard
into the object store (text only, one block per shard), runs the pool over them and writes each
shard as soon as all its rows are back, whatever order blocks finish in. Rows are keyed by row
number, so a batch that a retry delivers twice is written once (a warning says how many rows came
back twice).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from slimrt import corpus as _corpus
from slimrt.ray._cluster import check_cpus, connect, require_ray

log = logging.getLogger("slimrt.ray")


class Embedder:
    """The actor ``map_batches`` runs: one Runner per actor, loaded in the constructor.

    A batch is an Arrow table; the reply is the same table with ``output_field`` (fixed-size lists
    of float32) added and, unless ``keep_text``, the text column dropped."""

    def __init__(self, checkpoint: str, text_field: str, batch_size: int, normalize: bool | None, threads: int,
                 output_field: str, keep_text: bool) -> None:
        import torch

        from slimrt.runner import Runner

        self.threads = threads
        torch.set_num_threads(threads)
        self.runner = Runner.from_checkpoint(checkpoint)
        self.text_field, self.batch_size, self.normalize = text_field, batch_size, normalize
        self.output_field, self.keep_text = output_field, keep_text
        self.dim = self.runner.config.hidden_size

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import torch

        # Under OpenMP the thread count is per calling thread, and Ray may call from another thread
        # than the constructor's: set it where the work runs.
        torch.set_num_threads(self.threads)

        texts = batch.column(self.text_field).to_pylist()
        if any(t is None or not isinstance(t, str) for t in texts):
            bad = next(i for i, t in enumerate(texts) if t is None or not isinstance(t, str))
            raise ValueError(f"slimrt.ray.embed: {self.text_field!r} of a row is {texts[bad]!r}, expected a string")
        emb = (self.runner.embed(texts, batch_size=self.batch_size, normalize=self.normalize).numpy() if texts
               else np.zeros((0, self.dim), np.float32))
        out = batch if self.keep_text else batch.drop_columns([self.text_field])
        flat = pa.array(emb.reshape(-1), type=pa.float32())
        return out.append_column(self.output_field, pa.FixedSizeListArray.from_arrays(flat, self.dim))


def embed(dataset: Any, checkpoint: str | os.PathLike, *, text_field: str = "text", batch_size: int = 32,
          workers: int = 1, threads_per_worker: int = 1, normalize: bool | None = None, rows_per_call: int = 1024,
          output_field: str = "embedding", keep_text: bool = True) -> Any:
    """``dataset`` (a Ray Dataset with a string column ``text_field``) with an ``output_field`` column:
    (dim,) float32 sentence embeddings of the encoder checkpoint, lazily, as Ray Data does.

    workers: actors in the pool, each loading the checkpoint once; threads_per_worker: torch threads
    (and CPUs reserved) per actor; batch_size: texts per forward; rows_per_call: rows an actor takes
    per call (longest first inside it, so larger calls pad less). Row order is Ray Data's: set
    ``DataContext.get_current().execution_options.preserve_order = True`` to keep the input's, or
    carry an id column."""
    ray = require_ray()
    _corpus._check_sizes(batch_size=batch_size, workers=workers, threads_per_worker=threads_per_worker,
                         rows_per_call=rows_per_call)
    path = os.path.abspath(os.fspath(checkpoint))
    if not os.path.isdir(path):  # checked where it is cheap; the actors need the same path
        raise FileNotFoundError(f"slimrt.ray.embed: checkpoint {path} is not a directory")
    return dataset.map_batches(
        Embedder, batch_size=rows_per_call, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads_per_worker,
        fn_constructor_kwargs=dict(checkpoint=path, text_field=text_field, batch_size=batch_size, normalize=normalize,
                                   threads=threads_per_worker, output_field=output_field, keep_text=keep_text))


class _Assembler:
    """Output batches (any order, any cut) -> whole shards, each row once."""

    def __init__(self, store: _corpus.ShardStore, missing: set[int]) -> None:
        self.store, self.missing = store, set(missing)
        self.parts: dict[int, list] = {}
        self.have: dict[int, np.ndarray] = {}  # shard -> rows seen (bool per row)
        self.duplicates = 0

    def add(self, batch: Any) -> Iterator[tuple[int, Any]]:
        import pyarrow as pa

        rows = batch.column("row").to_numpy()
        shards = rows // self.store.shard_rows
        for shard in np.unique(shards):
            shard = int(shard)
            if shard not in self.missing:
                raise RuntimeError(f"Ray returned rows of shard {shard}, which was not asked for")
            idx = np.nonzero(shards == shard)[0]
            seen = self.have.setdefault(shard, np.zeros(len(self.store.shard_range(shard)), bool))
            local = rows[idx] - shard * self.store.shard_rows
            uniq, first = np.unique(local, return_index=True)  # the first of equal rows in this batch
            keep = first[~seen[uniq]]  # ... and only rows no earlier batch delivered
            self.duplicates += len(local) - len(keep)
            seen[local[keep]] = True
            self.parts.setdefault(shard, []).append(batch.take(pa.array(idx[keep])))
            if seen.all():
                table = pa.concat_tables(self.parts.pop(shard))
                del self.have[shard]
                self.missing.discard(shard)
                yield shard, table.sort_by("row")


def embed_corpus(checkpoint: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike, *,
                 address: str | None = None, workers: int = 1, threads_per_worker: int = 1, text_field: str = "text",
                 id_field: str | None = "id", format: str | None = None, batch_size: int = 32,
                 shard_rows: int = 10_000, normalize: bool | None = None, overwrite: bool = False,
                 progress: bool = True, on_shard: Callable[[int], None] | None = None) -> _corpus.EmbedReport:
    """``slimrt.corpus.embed_corpus`` on Ray Data (same files, same plan: a run may be resumed by
    either). address: the cluster (see ``slimrt.ray.connect``); workers x threads_per_worker CPUs."""
    _corpus._check_sizes(batch_size=batch_size, shard_rows=shard_rows, workers=workers,
                         threads_per_worker=threads_per_worker)
    corpus = _corpus.open_corpus(input, format=format, text_field=text_field, id_field=id_field)
    store = _corpus.ShardStore(output, _corpus.plan_of(corpus, checkpoint, shard_rows, normalize), overwrite=overwrite)
    ray = connect(address)
    check_cpus(ray, workers * threads_per_worker, f"--workers {workers} x --threads-per-worker {threads_per_worker}")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts rows written; Ray Data's would count blocks
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    assembler: _Assembler | None = None

    def produce(missing: set[int]) -> Iterator[tuple[int, Any]]:
        nonlocal assembler
        refs = [ray.put(table) for _, table in _corpus.iter_shards(corpus, shard_rows, missing)]
        ds = embed(ray.data.from_arrow_refs(refs), checkpoint, text_field="text", batch_size=batch_size,
                   workers=workers, threads_per_worker=threads_per_worker, normalize=normalize,
                   rows_per_call=shard_rows, keep_text=False)
        assembler = _Assembler(store, missing)
        batches = ds.iter_batches(batch_format="pyarrow", batch_size=None)
        try:
            for batch in batches:
                yield from assembler.add(batch)
        finally:  # a stopped run shuts the execution (and its actor pool) down now
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    report = _corpus.run_shards(corpus, store, produce, progress=progress, on_shard=on_shard)
    if assembler is not None and assembler.duplicates:
        log.warning("slimrt embed --ray: %d rows came back twice (a retried batch); each was written once",
                    assembler.duplicates)
    return report


__all__ = ["Embedder", "embed", "embed_corpus"]
