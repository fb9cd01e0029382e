"""Embedding a corpus file into Parquet shards: ``slimrt embed CKPT --input FILE --output OUT``.

Input: JSON Lines (an object per line with a text field, or a JSON string per line), Parquet (a
string column) or plain text (one passage per line, blank lines kept as rows). Each input row has a
row number, 0-based in file order (JSONL: blank lines are not records and have none); an ``id``
field or column, where the input has one, travels along.

Output: a directory of Parquet shards, ``part-00000.parquet`` ... each holding the rows
[i * shard_rows, (i + 1) * shard_rows) as columns ``row`` (int64), ``id`` (if any) and ``embedding``
(fixed-size list of float32), plus ``_slimrt_embed.json``, the plan the shards belong to. Readers
(``pyarrow.parquet.read_table(OUT)``, pandas, Ray Data, DuckDB) skip the manifest and the hidden
temporary files, as they skip every name starting with ``_`` or ``.``.

Restarts: a shard is written to a hidden temporary file and renamed into place, so a shard file is
either whole or absent; a rerun of the same command checks the plan and each shard's row count,
and embeds only the shards that are missing. Rows are assigned to shards by row number alone, so
every row is written exactly once however often a run stops. The local run here reads, embeds and
writes one shard at a time (memory: one shard of text plus its embeddings); ``slimrt.ray`` runs the
same plan on Ray Data.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

FORMATS = ("jsonl", "parquet", "text")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".txt": "text"}
MANIFEST = "_slimrt_embed.json"
PARQUET_HINT = "pip install pyarrow (or 'slimrt[ray]', which brings it)"


def _pa() -> Any:
    """pyarrow, or an ImportError that says what to install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is what writes the shards)
    except ImportError:
        raise ImportError(f"slimrt embed --input/--output reads and writes Parquet: {PARQUET_HINT}") from None
    return pyarrow


@dataclass(frozen=True)
class Corpus:
    """A corpus file and what was found in it: ``rows`` records, texts in ``text_field``, ids in
    ``id_field`` (None: the row number is the only key) of ``id_type`` ("int64" or "string" for JSONL;
    Parquet keeps its column's type)."""

    path: str
    format: str
    text_field: str
    id_field: str | None
    id_type: str | None
    rows: int


def _format_of(path: str, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
        return format
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise ValueError(f"--input {path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                     f"pass --format {'|'.join(FORMATS)}")


def _jsonl_record(line: bytes, path: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--input {path}: line {lineno} is not JSON ({e})") from None


def open_corpus(path: str | os.PathLike, *, format: str | None = None, text_field: str = "text",
                id_field: str | None = "id") -> Corpus:
    """Checks ``path`` and counts its rows (one pass over the file, nothing kept). ``id_field`` is
    taken where the input has it (JSONL: the first record decides, then every record must have one
    of the same type); None never takes one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path}: no such file")
    fmt = _format_of(path, format)
    id_name, id_type, rows = None, None, 0
    if fmt == "parquet":
        pq = _pa().parquet
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise ValueError(f"--text-field {text_field!r}: {path} has no such column (columns: {', '.join(names)})")
        ttype = pf.schema_arrow.field(text_field).type
        if str(ttype) not in ("string", "large_string", "string_view"):
            raise ValueError(f"--text-field {text_field!r}: column of {ttype}, expected strings")
        if id_field is not None and id_field in names:
            id_name, id_type = id_field, str(pf.schema_arrow.field(id_field).type)
        rows = pf.metadata.num_rows
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if rows == 0:  # the first record decides whether rows carry ids
                    first = _jsonl_record(line, path, lineno)
                    if isinstance(first, dict) and id_field is not None and id_field in first:
                        value = first[id_field]
                        if isinstance(value, bool) or not isinstance(value, (int, str)):
                            raise ValueError(f"--input {path}: line {lineno}: {id_field!r} is {value!r}; "
                                             "ids must be integers or strings")
                        id_name, id_type = id_field, "int64" if isinstance(value, int) else "string"
                rows += 1
    else:
        with open(path, "rb") as f:
            rows = sum(1 for _ in f)
    return Corpus(path, fmt, text_field, id_name, id_type, rows)


def _shard_table(rows: range, texts: list[str], ids: list | None, corpus: Corpus) -> Any:
    pa = _pa()
    cols = {"row": pa.array(rows, type=pa.int64())}
    if ids is not None:
        cols["id"] = pa.array(ids, type=pa.int64() if corpus.id_type == "int64" else pa.string())
    cols["text"] = pa.array(texts, type=pa.string())
    return pa.table(cols)


def _jsonl_fields(record: Any, corpus: Corpus, lineno: int) -> tuple[str, Any]:
    """(text, id) of one JSONL record, or a ValueError naming the line."""
    where = f"--input {corpus.path}: line {lineno}"
    if isinstance(record, str):
        if corpus.id_field is not None:
            raise ValueError(f"{where} is a string; earlier records are objects with {corpus.id_field!r}")
        return record, None
    if not isinstance(record, dict):
        raise ValueError(f"{where} is neither an object nor a string")
    text = record.get(corpus.text_field)
    if not isinstance(text, str):
        raise ValueError(f"{where}: {corpus.text_field!r} is {text!r}, expected a string (--text-field)")
    if corpus.id_field is None:
        return text, None
    value = record.get(corpus.id_field)
    ok = isinstance(value, int) and not isinstance(value, bool) if corpus.id_type == "int64" else isinstance(value, str)
    if not ok:
        raise ValueError(f"{where}: {corpus.id_field!r} is {value!r}; the first record's id was "
                         f"{'an integer' if corpus.id_type == 'int64' else 'a string'}, so every record needs one")
    return text, value


def iter_shards(corpus: Corpus, shard_rows: int, only: set[int] | None = None) -> Iterator[tuple[int, Any]]:
    """(shard index, Arrow table ``row``, [``id``], ``text``) for each shard in ``only`` (default: all),
    in order, one shard in memory at a time. Shards not asked for are skipped without being parsed."""
    n_shards = -(-corpus.rows // shard_rows)
    wanted = set(range(n_shards)) if only is None else set(only)
    if corpus.format == "parquet":
        yield from _parquet_shards(corpus, shard_rows, wanted)
        return
    texts: list[str] = []
    ids: list | None = [] if corpus.id_field is not None else None
    row = 0
    with open(corpus.path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if corpus.format == "jsonl" and not line.strip():
                continue
            shard = row // shard_rows
            if shard in wanted:
                if corpus.format == "jsonl":
                    text, ident = _jsonl_fields(_jsonl_record(line, corpus.path, lineno), corpus, lineno)
                else:
                    try:
                        text, ident = line.rstrip(b"\r\n").decode("utf-8"), None
                    except UnicodeDecodeError as e:
                        raise ValueError(f"--input {corpus.path}: line {lineno} is not UTF-8 ({e})") from None
                texts.append(text)
                if ids is not None:
                    ids.append(ident)
            row += 1
            if row % shard_rows == 0 or row == corpus.rows:
                if shard in wanted:
                    yield shard, _shard_table(range(shard * shard_rows, row), texts, ids, corpus)
                texts = []
                ids = [] if ids is not None else None
    if row != corpus.rows:
        raise RuntimeError(f"--input {corpus.path} changed while it was read ({corpus.rows} rows, now {row})")


def _parquet_shards(corpus: Corpus, shard_rows: int, wanted: set[int]) -> Iterator[tuple[int, Any]]:
    """Only the row groups that overlap a wanted shard are read, in batches, cut at shard bounds."""
    pa = _pa()
    pf = pa.parquet.ParquetFile(corpus.path)
    columns = [corpus.text_field] + ([corpus.id_field] if corpus.id_field else [])
    pieces: dict[int, list] = {}  # shard -> its pieces so far (a shard may span batches and row groups)
    start = 0  # the row number of the next row of the file
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if n == 0 or not wanted.intersection(range(start // shard_rows, (start + n - 1) // shard_rows + 1)):
            start += n
            continue
        for batch in pf.iter_batches(batch_size=8192, row_groups=[g], columns=columns):
            at = 0
            while at < batch.num_rows:  # cut the batch where shards end
                row = start + at
                shard = row // shard_rows
                take = min(batch.num_rows - at, (shard + 1) * shard_rows - row)
                if shard in wanted:
                    pieces.setdefault(shard, []).append(batch.slice(at, take))
                    end = min((shard + 1) * shard_rows, corpus.rows)
                    if row + take == end:
                        yield shard, _parquet_shard(pa, corpus, shard * shard_rows, end, pieces.pop(shard))
                at += take
            start += batch.num_rows
    if start != corpus.rows:
        raise RuntimeError(f"--input {corpus.path}: row groups hold {start} rows, its footer says {corpus.rows}")


def _parquet_shard(pa: Any, corpus: Corpus, first: int, end: int, batches: list) -> Any:
    t = pa.Table.from_batches(batches)
    text = t.column(corpus.text_field)
    if text.null_count:
        bad = first + text.is_null().to_pylist().index(True)
        raise ValueError(f"--input {corpus.path}: row {bad} has no text (null in {corpus.text_field!r})")
    cols = {"row": pa.array(range(first, end), type=pa.int64())}
    if corpus.id_field:
        cols["id"] = t.column(corpus.id_field)
    cols["text"] = text.cast(pa.string())
    return pa.table(cols)


# ----- the output: a directory of shards and the plan they belong to --------------------------------
class ShardStore:
    """OUT/part-NNNNN.parquet shards of one plan (``OUT/_slimrt_embed.json``).

    ``plan`` says what the shards hold (input file, its size and mtime, fields, rows, shard_rows,
    checkpoint, normalize). An existing OUT with another plan is refused (``overwrite`` clears it),
    so a rerun never mixes rows of two runs."""

    def __init__(self, out: str | os.PathLike, plan: dict[str, Any], overwrite: bool = False) -> None:
        self.out = os.fspath(out)
        self.plan = plan
        self.rows, self.shard_rows = plan["rows"], plan["shard_rows"]
        self.shards = -(-self.rows // self.shard_rows)
        self._width = max(5, len(str(max(self.shards - 1, 0))))
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"--output {self.out} is a file; expected a directory (it is created)")
        manifest = os.path.join(self.out, MANIFEST)
        if os.path.isdir(self.out) and os.listdir(self.out):
            if not os.path.exists(manifest):
                raise ValueError(f"--output {self.out} is a non-empty directory that slimrt embed did not write; "
                                 "pass an empty or new directory")
            with open(manifest, encoding="utf-8") as f:
                old = json.load(f)
            differ = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            if differ and not overwrite:
                what = "; ".join(f"{k}: {old.get(k)!r} then, {plan.get(k)!r} now" for k in differ)
                raise ValueError(f"--output {self.out} holds shards of another run ({what}); pass --overwrite to "
                                 "replace them or another --output")
            if differ:
                self._clear()
        os.makedirs(self.out, exist_ok=True)
        for name in os.listdir(self.out):  # temporary files of a run that stopped mid-write
            if name.startswith(".part-") and name.endswith(".tmp"):
                os.remove(os.path.join(self.out, name))
        _atomic_write(manifest, (json.dumps(plan, indent=1, sort_keys=True) + "\n").encode())

    def _clear(self) -> None:
        for name in os.listdir(self.out):
            if name == MANIFEST or (name.startswith(("part-", ".part-")) and ".parquet" in name):
                os.remove(os.path.join(self.out, name))

    def path(self, shard: int) -> str:
        return os.path.join(self.out, f"part-{shard:0{self._width}d}.parquet")

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows))

    def done(self) -> set[int]:
        """Shards whose file is there and holds its rows (a file that does not is removed)."""
        pq = _pa().parquet
        out = set()
        for shard in range(self.shards):
            path = self.path(shard)
            if not os.path.exists(path):
                continue
            try:
                ok = pq.read_metadata(path).num_rows == len(self.shard_range(shard))
            except Exception:  # noqa: BLE001  (a damaged file of any kind is written again)
                ok = False
            if ok:
                out.add(shard)
            else:
                os.remove(path)
        return out

    def write(self, shard: int, table: Any) -> None:
        """Writes a shard whole or not at all (a temporary file, then a rename)."""
        rows = table.column("row").to_numpy()
        want = self.shard_range(shard)
        if len(rows) != len(want) or rows[0] != want.start or rows[-1] != want.stop - 1:
            raise RuntimeError(f"shard {shard}: rows {rows[:1]}..{rows[-1:]} ({len(rows)}), expected "
                               f"{want.start}..{want.stop - 1}")
        path = self.path(shard)
        tmp = os.path.join(self.out, "." + os.path.basename(path) + ".tmp")
        _pa().parquet.write_table(table, tmp)
        os.replace(tmp, path)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def plan_of(corpus: Corpus, checkpoint: str | os.PathLike, shard_rows: int, normalize: bool | None) -> dict[str, Any]:
    """What a run's shards depend on: a rerun resumes only when all of it is the same."""
    st = os.stat(corpus.path)
    return {"version": 1, "input": os.path.abspath(corpus.path), "input_bytes": st.st_size,
            "input_mtime_ns": st.st_mtime_ns, **{k: v for k, v in asdict(corpus).items() if k != "path"},
            "shard_rows": shard_rows, "checkpoint": os.path.abspath(os.fspath(checkpoint)), "normalize": normalize}


def embedding_table(shard: Any, emb: Any) -> Any:
    """The shard's ``row`` and ``id`` columns with ``embedding`` (emb: (rows, dim) float32 numpy)."""
    pa = _pa()
    rows, dim = emb.shape
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    cols = {name: shard.column(name) for name in ("row", "id") if name in shard.column_names}
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table(cols)


# ----- a run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedReport:
    """What a run did: ``rows`` in the corpus, of which ``embedded`` now (the rest were in the
    ``skipped`` shards a previous run completed); ``seconds`` of wall time."""

    output: str
    rows: int
    shards: int
    skipped: int
    embedded: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.embedded / max(self.seconds, 1e-9)


Producer = Callable[[set[int]], Iterator[tuple[int, Any]]]


def run_shards(corpus: Corpus, store: ShardStore, produce: Producer, progress: bool = True,
               on_shard: Callable[[int], None] | None = None) -> EmbedReport:
    """Writes the shards ``produce(missing)`` yields (index, embedding table), in whatever order,
    with a progress bar over rows. ``on_shard(index)`` runs after each shard is in place."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    done = store.done()
    missing = set(range(store.shards)) - done
    skipped_rows = sum(len(store.shard_range(s)) for s in done)
    embedded = 0
    with tqdm(total=corpus.rows, initial=skipped_rows, unit=" rows", disable=not progress, desc="embed",
              dynamic_ncols=True) as bar:
        # closing(): a run that stops (Ctrl-C, an error) ends the producer now, not when it is collected,
        # so that the Ray actors it holds are let go at once.
        with contextlib.closing(produce(missing) if missing else (x for x in ())) as shards:
            for shard, table in shards:
                if shard not in missing:
                    raise RuntimeError(f"shard {shard} was produced twice or was not asked for")
                store.write(shard, table)
                missing.discard(shard)
                embedded += table.num_rows
                bar.update(table.num_rows)
                if on_shard is not None:
                    on_shard(shard)
    if missing:
        raise RuntimeError(f"shards {sorted(missing)[:10]} were never produced")
    return EmbedReport(store.out, corpus.rows, store.shards, len(done), embedded, time.perf_counter() - t0)


def embed_corpus(checkpoint: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike, *,
                 text_field: str = "text", id_field: str | None = "id", format: str | None = None,
                 batch_size: int = 32, shard_rows: int = 10_000, normalize: bool | None = None,
                 overwrite: bool = False, progress: bool = True,
                 on_shard: Callable[[int], None] | None = None) -> EmbedReport:
    """Embeds every row of ``input`` with the encoder checkpoint into Parquet shards under ``output``,
    one shard at a time in this process (see the module docstring). Rerunning resumes."""
    from slimrt.runner import Runner

    _check_sizes(batch_size=batch_size, shard_rows=shard_rows)
    corpus = open_corpus(input, format=format, text_field=text_field, id_field=id_field)
    store = ShardStore(output, plan_of(corpus, checkpoint, shard_rows, normalize), overwrite=overwrite)
    runner = None

    def produce(missing: set[int]) -> Iterator[tuple[int, Any]]:
        nonlocal runner
        runner = runner or Runner.from_checkpoint(checkpoint)
        for shard, table in iter_shards(corpus, shard_rows, missing):
            emb = runner.embed(table.column("text").to_pylist(), batch_size=batch_size, normalize=normalize)
            yield shard, embedding_table(table, emb.numpy())

    return run_shards(corpus, store, produce, progress=progress, on_shard=on_shard)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")


__all__ = ["Corpus", "EmbedReport", "ShardStore", "embed_corpus", "embedding_table", "iter_shards", "open_corpus",
           "plan_of", "run_shards"]
