"""Ingest: read every source into canonical Arrow record batches, quarantining bad records.

In:  the recipe's sources (JSONL plain/.gz/.zst, Parquet, Arrow IPC, CSV, `datasets` saved to
     disk, `datasets` hub names).
Out: a PCollection of `pyarrow.RecordBatch` with the canonical columns (`schemas.rows`), the
     source's kept fields and `__row_key`; and a PCollection of quarantine batches
     (`QUARANTINE_SCHEMA`: file, line/row, reason, field, raw bytes) for malformed records.
Cost: one read of the input. JSON parsing is per line (orjson) because a malformed line must
     be pinned to its line number; everything after parsing (normalisation, ids, filtering)
     is vectorised with pyarrow.compute over a batch. One read task per file (per row group
     for Parquet), so a runner parallelises across files.

Problems that make a source unusable (missing file, unknown format, a text field a columnar
file does not have) are raised by `plan_reads` before the pipeline starts.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.io.atomic import sha256_file
from thresher.io.compression import open_binary
from thresher.core.stage import count_by_source, counter
from thresher.core import rows
from thresher.recipe.schema import Normalize, Recipe, RecipeError, Source, expand_source_files

log = logging.getLogger("thresher.ingest")

QUARANTINE_TAG = "quarantine"
_RAW_LIMIT = 1 << 20  # keep at most 1 MiB of one bad record's bytes
_PROGRESS_ROWS = 250_000  # a progress line per this many rows of one file


class InputError(RecipeError):
    """An input that cannot be read at all (raised before the pipeline starts)."""


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a file (or one Parquet row group) of one source."""

    source: Source
    path: str
    format: str
    file_index: int  # global over the run: orders rows and makes `__row_key` unique
    part: int | None = None  # Parquet row group


@dataclass(frozen=True)
class InputFile:
    source: str
    path: str
    format: str
    size: int
    sha256: str


# ---------------------------------------------------------------------------------------
# Planning (driver side, before the pipeline)


def plan_reads(recipe: Recipe, sources: list[Source] | None = None, file_offset: int = 0,
               with_hashes: bool = True) -> tuple[list[ReadTask], list[InputFile]]:
    """Expand globs, detect formats, check schemas; one ReadTask per file/row group."""
    tasks: list[ReadTask] = []
    inputs: list[InputFile] = []
    problems: list[str] = []
    file_index = file_offset
    for source in sources if sources is not None else recipe.sources:
        try:
            files = expand_source_files(recipe, source)
        except RecipeError as exc:
            problems += exc.problems
            continue
        for path, fmt in files:
            try:
                parts = _check_and_split(source, path, fmt)
            except InputError as exc:
                problems += exc.problems
                continue
            except Exception as exc:  # unreadable file: say which and why
                problems.append(f"sources.{source.name}: cannot read {path}: {exc}")
                continue
            for part in parts:
                tasks.append(ReadTask(source, path, fmt, file_index, part))
            inputs.append(_describe_input(source.name, path, fmt, with_hashes))
            file_index += 1
    if problems:
        raise InputError(problems, "inputs")
    return tasks, inputs


def _describe_input(source: str, path: str, fmt: str, with_hashes: bool) -> InputFile:
    if fmt == "hf_hub":
        return InputFile(source, path, fmt, 0, "")
    if os.path.isdir(path):
        files = sorted(
            os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if not f.startswith(".")
        )
        size = sum(os.path.getsize(f) for f in files)
        if with_hashes:
            import hashlib

            h = hashlib.sha256()
            for f in files:
                h.update(os.path.relpath(f, path).encode() + b"\0" + sha256_file(f).encode())
            digest = h.hexdigest()
        else:
            digest = ""
        return InputFile(source, path, fmt, size, digest)
    return InputFile(source, path, fmt, os.path.getsize(path), sha256_file(path) if with_hashes else "")


def _check_and_split(source: Source, path: str, fmt: str) -> list[int | None]:
    """Check a columnar file has the fields the source needs; split Parquet by row group."""
    needed = [f for f in source.template_fields() if f]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        _check_fields(source, path, meta.schema_arrow, needed)
        return list(range(meta.num_row_groups)) or [None]
    if fmt == "arrow":
        _check_fields(source, path, _open_ipc(path).schema, needed)
    elif fmt == "hf_disk":
        ds = _load_hf_disk(source, path)
        _check_fields(source, path, ds.data.schema, needed)
    elif fmt == "csv":
        with open_binary(path) as fh:
            header = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        cols = [c.strip().strip('"') for c in header.split(source.csv_delimiter)]
        missing = [f for f in needed if f not in cols]
        if missing:
            raise InputError(
                [f"sources.{source.name}: {path}: header has no column {missing[0]!r} (columns: {cols})"]
            )
    return [None]


def _check_fields(source: Source, path: str, schema: pa.Schema, needed: list[str]) -> None:
    for f in needed:
        if f not in schema.names:
            raise InputError(
                [f"sources.{source.name}: {path}: no field {f!r} (fields: {schema.names})"]
            )
    if source.text_field:
        t = schema.field(source.text_field).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(
                [f"sources.{source.name}: {path}: text field {source.text_field!r} has type {t}, "
                 "not string; use `text_template` to format it"]
            )


# ---------------------------------------------------------------------------------------
# Opening files


def _open_ipc(path: str):
    try:
        return pa.ipc.open_file(pa.memory_map(path))
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(path))


def _load_hf_disk(source: Source, path: str):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if not source.split:
            raise InputError(
                [f"sources.{source.name}: {path} is a DatasetDict with splits {list(ds)}; set `split:`"]
            )
        if source.split not in ds:
            raise InputError([f"sources.{source.name}: {path} has no split {source.split!r} ({list(ds)})"])
        ds = ds[source.split]
    return ds


# ---------------------------------------------------------------------------------------
# Turning records into canonical batches


class _Chunk:
    """Rows gathered from dict records (JSONL, hub) before conversion to Arrow."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ids: list[Any] = []
        self.row_nos: list[int] = []
        self.extras: list[dict[str, Any]] = []
        self.q_rows: list[int] = []
        self.q_reasons: list[str] = []
        self.q_fields: list[str | None] = []
        self.q_raw: list[bytes] = []

    def quarantine(self, row_no: int, reason: str, field: str | None, raw: bytes) -> None:
        self.q_rows.append(row_no)
        self.q_reasons.append(reason)
        self.q_fields.append(field)
        self.q_raw.append(raw[:_RAW_LIMIT])

    def __len__(self) -> int:
        return len(self.texts) + len(self.q_rows)


def _quarantine_batch(source: str, path: str, row_nos, reasons, fields, raws) -> pa.RecordBatch:
    n = len(row_nos)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([source] * n, pa.string()),
            pa.array([path] * n, pa.string()),
            pa.array(row_nos, pa.int64()),
            pa.array(reasons, pa.string()),
            pa.array(fields, pa.string()),
            pa.array(raws, pa.binary()),
        ],
        schema=rows.QUARANTINE_SCHEMA,
    )


def _column_from_values(values: list[Any]) -> pa.Array:
    """Infer an Arrow column; values of mixed types are stored as JSON text instead of failing."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array(
            [None if v is None else (v if isinstance(v, str) else orjson.dumps(v, default=str).decode())
             for v in values],
            pa.string(),
        )


def rename_extra(name: str) -> str:
    # A source field named like a canonical column (e.g. the pool's own `source`) is kept
    # under `orig_<name>` so that neither is lost.
    return f"orig_{name}" if name in rows.CANONICAL_NAMES or rows.is_internal(name) else name


def normalize_text(arr: pa.Array, norm: Normalize) -> pa.Array:
    """Vectorised text normalisation (pyarrow.compute, RE2)."""
    if norm.nfc:
        # Not pc.utf8_normalize: in pyarrow 25 it returns the decomposed form for every
        # `form` (NFC included; see tests/test_ingest_formats.py). CPython's unicodedata is
        # exact, and `is_normalized` makes the usual already-NFC text nearly free.
        values = arr.to_pylist()
        if not all(v is None or unicodedata.is_normalized("NFC", v) for v in values):
            arr = pa.array([v if v is None else unicodedata.normalize("NFC", v) for v in values], pa.string())
    if norm.strip_control:
        # C0 controls except tab/newline/carriage return, DEL, and C1 controls.
        arr = pc.replace_substring_regex(arr, r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}-\x{9f}]", "")
    if norm.fold_whitespace:
        arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))
    return arr


def content_id(texts: list[str]) -> list[str]:
    return [xxhash.xxh3_64_hexdigest(t.encode("utf-8", "surrogatepass")) for t in texts]


def _finish(
    task: ReadTask,
    text: pa.Array,
    ids: pa.Array | None,
    row_nos: np.ndarray,
    extras: pa.Table | None,
    raw_of: Any,
) -> tuple[pa.RecordBatch | None, pa.RecordBatch | None]:
    """Normalise, quarantine empty texts, attach id, provenance and extras."""
    src = task.source
    text = normalize_text(text, src.normalize)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    empty = pc.fill_null(empty, True)
    q_batch = None
    if pc.any(empty).as_py():
        bad = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
        q_batch = _quarantine_batch(
            src.name, task.path, row_nos[bad].tolist(), ["empty text"] * len(bad),
            [src.text_field or "text_template"] * len(bad), [raw_of(int(i)) for i in bad],
        )
        good = pc.invert(empty)
        text = text.filter(good)
        row_nos = row_nos[~empty.to_numpy(zero_copy_only=False)]
        ids = ids.filter(good) if ids is not None else None
        extras = extras.filter(good) if extras is not None else None
    n = len(text)
    if n == 0:
        return None, q_batch
    texts_py = None
    if ids is None:
        texts_py = text.to_pylist()
        id_arr = pa.array(content_id(texts_py), pa.string())
    else:
        id_arr = ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())
        if id_arr.null_count:
            texts_py = text.to_pylist()
            fallback = content_id(texts_py)
            id_arr = pa.array([v if v is not None else fallback[i] for i, v in enumerate(id_arr.to_pylist())], pa.string())
    row_key = (np.uint64(task.file_index) << np.uint64(rows.ROW_KEY_FILE_SHIFT)) | row_nos.astype(np.uint64)
    cols = {
        rows.ID: id_arr,
        rows.TEXT: text.cast(pa.string()),
        rows.SOURCE: pa.array([src.name] * n, pa.string()),
        rows.SOURCE_FILE: pa.array([task.path] * n, pa.string()),
        rows.SOURCE_ROW: pa.array(row_nos, pa.int64()),
    }
    if extras is not None:
        for name in extras.column_names:
            col = extras.column(name)
            cols[rename_extra(name)] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    names = rows.column_order(list(cols))
    arrays = [cols[n_] for n_ in names] + [pa.array(row_key, pa.uint64())]
    batch = pa.RecordBatch.from_arrays(arrays, names=names + [rows.ROW_KEY])
    return batch, q_batch


def _keep(src: Source, name: str) -> bool:
    # The field that became the canonical `text` (or `id`) under the same name is not kept
    # twice; a differently named one (`question`) stays, as do clashes like `source`.
    if (name == rows.TEXT and src.text_field == rows.TEXT) or (name == rows.ID and src.id_field == rows.ID):
        return False
    return src.keep_fields == "all" or name in src.keep_fields


def _dict_records_to_batches(task: ReadTask, records: Iterator[tuple[int, bytes, Any, str | None]],
                             batch_rows: int):
    """(row_no, raw bytes, parsed object or None, parse error) -> canonical + quarantine batches."""
    src = task.source
    fields = src.template_fields()
    chunk = _Chunk()

    def flush(chunk: _Chunk):
        q = None
        if chunk.q_rows:
            q = _quarantine_batch(src.name, task.path, chunk.q_rows, chunk.q_reasons, chunk.q_fields, chunk.q_raw)
        if not chunk.texts:
            return None, q
        extras = None
        if chunk.extras:
            keys: dict[str, None] = {}
            for r in chunk.extras:
                keys.update(dict.fromkeys(r))
            extras = pa.table({k: _column_from_values([r.get(k) for r in chunk.extras]) for k in keys}) if keys else None
        ids = _column_from_values(chunk.ids) if src.id_field else None
        if ids is not None and not (pa.types.is_string(ids.type) or pa.types.is_integer(ids.type) or pa.types.is_null(ids.type)):
            ids = pc.cast(ids, pa.string())
        if ids is not None and pa.types.is_null(ids.type):
            ids = pa.array([None] * len(ids), pa.string())
        texts = chunk.texts
        extras_rows = chunk.extras

        def raw_of(i: int) -> bytes:
            return orjson.dumps({**extras_rows[i], "__text": texts[i]}, default=str) if extras_rows else texts[i].encode()

        b, q2 = _finish(task, pa.array(texts, pa.string()), ids, np.asarray(chunk.row_nos, np.int64), extras, raw_of)
        if q2 is not None:
            q = q2 if q is None else pa.Table.from_batches([q, q2]).combine_chunks().to_batches()[0]
        return b, q

    try:
        for row_no, raw, obj, err in records:
            if err is not None:
                chunk.quarantine(row_no, err, None, raw)
            elif not isinstance(obj, dict):
                chunk.quarantine(row_no, f"not a JSON object (got {type(obj).__name__})", None, raw)
            else:
                text, reason, bad_field = _text_of(src, obj, fields)
                if reason is not None:
                    chunk.quarantine(row_no, reason, bad_field, raw)
                else:
                    chunk.texts.append(text)  # type: ignore[arg-type]
                    chunk.row_nos.append(row_no)
                    if src.id_field:
                        chunk.ids.append(obj.get(src.id_field))
                    chunk.extras.append({k: v for k, v in obj.items() if _keep(src, k)})
            if len(chunk) >= batch_rows:
                yield flush(chunk)
                chunk = _Chunk()
    except (OSError, EOFError, ValueError):
        # The file broke part-way (truncated gzip, say): keep every row read before the
        # break, then let the caller record the failure itself.
        if len(chunk):
            yield flush(chunk)
        raise
    if len(chunk):
        yield flush(chunk)


def _text_of(src: Source, obj: dict, fields: list[str]) -> tuple[str | None, str | None, str | None]:
    if src.text_template is None:
        f = src.text_field
        if f not in obj or obj[f] is None:
            return None, f"missing text field {f!r}", f
        v = obj[f]
        if not isinstance(v, str):
            return None, f"text field {f!r} is not a string (got {type(v).__name__})", f
        return v, None, None
    for f in fields:
        if obj.get(f) is None:
            return None, f"missing field {f!r} used by text_template", f
    try:
        return src.text_template.format(**obj), None, None
    except (KeyError, IndexError, ValueError) as exc:
        return None, f"text_template failed: {exc}", None


_JSON_BLOCK = 8 << 20  # decompressed bytes of JSONL parsed at a time


def _read_jsonl(task: ReadTask, batch_rows: int):
    """JSONL in blocks of whole lines. A block that pyarrow's (C++, multi-threaded) JSON reader
    parses cleanly becomes Arrow directly; any block it cannot take exactly — a malformed
    line, invalid UTF-8, mixed types, blank lines (line numbers would shift), values it would
    reinterpret (timestamps) — goes through the per-line path, which pins each bad record to
    its line. Both paths give the same rows (tests/test_ingest_formats.py)."""
    first_line = 1
    pending = b""
    with open_binary(task.path) as fh:
        for block, error in _read_blocks(fh):
            data = pending + block
            last = error is not None or not block
            if last:
                # End of file, or the file broke: keep every complete line read so far.
                cut = len(data) if error is None else data.rfind(b"\n") + 1
                chunk, pending = data[:cut], b""
                if chunk and not chunk.endswith(b"\n"):
                    chunk += b"\n"
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a block: read on
                    pending = data
                    continue
                chunk, pending = data[:cut], data[cut:]
            if chunk:
                n_lines = chunk.count(b"\n")
                table = _parse_json_block(task.source, chunk, n_lines) if FAST_JSON else None
                if table is None:
                    yield from _dict_records_to_batches(task, _iter_lines(chunk, first_line), batch_rows)
                else:
                    lines: list[bytes] = []

                    def raw_by_row(row_no: int, chunk=chunk, first=first_line, lines=lines) -> bytes:
                        if not lines:
                            lines.extend(chunk.split(b"\n"))
                        return lines[row_no - first]

                    yield from _table_to_batches(task, table, first_line, batch_rows, raw_by_row=raw_by_row)
                first_line += n_lines
            if error is not None:
                raise error
            if last:
                break


def _read_blocks(fh, piece: int = 64 << 10):
    """(block, error) pairs of about _JSON_BLOCK bytes, read in small pieces so that a file
    that breaks (truncated gzip) loses at most the last piece; the final pair has an empty
    block (end of file) or the error."""
    buf: list[bytes] = []
    size = 0
    while True:
        try:
            data = fh.read(piece)
        except (OSError, EOFError) as exc:
            yield b"".join(buf), exc
            return
        if not data:
            if buf:
                yield b"".join(buf), None
            yield b"", None
            return
        buf.append(data)
        size += len(data)
        if size >= _JSON_BLOCK:
            yield b"".join(buf), None
            buf, size = [], 0


FAST_JSON = True  # tests switch it off to compare the two paths


def _parse_json_block(src: Source, chunk: bytes, n_lines: int) -> pa.Table | None:
    import pyarrow.json as pajson

    try:
        table = pajson.read_json(io.BytesIO(chunk), read_options=pajson.ReadOptions(block_size=1 << 20))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    # A blank line makes the row count differ from the line count (line numbers would
    # shift), so it sends the block down the per-line path too.
    if table.num_rows != n_lines or any(_has_timestamp(f.type) for f in table.schema):
        return None
    if src.text_template is None:
        f = src.text_field
        if f not in table.column_names or not pa.types.is_string(table.schema.field(f).type) \
                or table.column(f).null_count:
            return None  # missing or non-string text in some row: the per-line path says which
    return table


def _has_timestamp(t: pa.DataType) -> bool:
    """pyarrow's JSON reader turns date-like strings into timestamps; orjson keeps strings."""
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_timestamp(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_timestamp(t.value_type)
    return False


def _iter_lines(chunk: bytes, first_line: int) -> Iterator[tuple[int, bytes, Any, str | None]]:
    for line_no, raw in enumerate(chunk.split(b"\n")[:-1], first_line):
        if not raw.strip():
            continue
        raw = raw.rstrip(b"\r")  # the record, without its line terminator
        try:
            yield line_no, raw, orjson.loads(raw), None
        except orjson.JSONDecodeError as exc:
            try:
                raw.decode("utf-8")
                reason = f"invalid JSON: {exc}"
            except UnicodeDecodeError as uexc:
                reason = f"invalid UTF-8 at byte {uexc.start}"
            yield line_no, raw, None, reason


def _iter_hub(src: Source) -> Iterator[tuple[int, bytes, Any, str | None]]:
    import datasets

    ds = datasets.load_dataset(src.hf_name, src.hf_config, split=src.split or "train", streaming=True)
    for i, obj in enumerate(ds):
        yield i, b"", obj, None


def _table_to_batches(task: ReadTask, table: pa.Table, first_row: int, batch_rows: int,
                      row_numbers: np.ndarray | None = None,
                      raw_by_row: Callable[[int], bytes] | None = None):
    """Columnar input (Parquet, Arrow, CSV, datasets, parsed JSONL blocks) -> canonical +
    quarantine batches. `raw_by_row(row_number)` gives a bad row's original bytes when the
    caller has them (JSONL); otherwise the row is kept as JSON."""
    src = task.source

    def raw(part: pa.Table, i: int, row_no: int) -> bytes:
        return raw_by_row(int(row_no)) if raw_by_row is not None else _row_json(part, i)

    for off in range(0, table.num_rows, batch_rows):
        part = table.slice(off, batch_rows)
        if row_numbers is not None:
            row_nos = row_numbers[off: off + part.num_rows]
        else:
            row_nos = np.arange(first_row + off, first_row + off + part.num_rows, dtype=np.int64)
        q = None
        if src.text_template is None:
            text = part.column(src.text_field).combine_chunks()
            nulls = text.is_null()
            if text.null_count:
                bad = np.flatnonzero(nulls.to_numpy(zero_copy_only=False))
                q = _quarantine_batch(
                    src.name, task.path, row_nos[bad].tolist(),
                    [f"missing text field {src.text_field!r}"] * len(bad), [src.text_field] * len(bad),
                    [raw(part, int(i), row_nos[i]) for i in bad],
                )
                keep = pc.invert(nulls)
                part = part.filter(keep)
                text = text.filter(keep)
                row_nos = row_nos[~nulls.to_numpy(zero_copy_only=False)]
            text = text.cast(pa.string())
        else:
            fields = src.template_fields()
            recs = part.select(fields).to_pylist()
            texts, bad, reasons = [], [], []
            for i, r in enumerate(recs):
                t, reason, _ = _text_of(src, r, fields)
                if reason is None:
                    texts.append(t)
                else:
                    bad.append(i)
                    reasons.append(reason)
            if bad:
                q = _quarantine_batch(src.name, task.path, row_nos[bad].tolist(), reasons,
                                      ["text_template"] * len(bad), [raw(part, i, row_nos[i]) for i in bad])
                mask = np.ones(part.num_rows, bool)
                mask[bad] = False
                part = part.filter(pa.array(mask))
                row_nos = row_nos[mask]
            text = pa.array(texts, pa.string())
        ids = part.column(src.id_field).combine_chunks() if src.id_field and src.id_field in part.column_names else None
        extras = part.select([c for c in part.column_names if _keep(src, c)])

        def raw_of(i: int, part=part, row_nos=row_nos) -> bytes:
            return raw(part, i, row_nos[i])

        b, q2 = _finish(task, text, ids, row_nos, extras, raw_of)
        if q2 is not None:
            q = q2 if q is None else pa.Table.from_batches([q, q2]).combine_chunks().to_batches()[0]
        yield b, q


def _row_json(table: pa.Table, i: int) -> bytes:
    return orjson.dumps(table.slice(i, 1).to_pylist()[0], default=str)


def _iter_csv(task: ReadTask, batch_rows: int):
    """CSV: pyarrow's reader; rows with the wrong number of fields and bytes that are not UTF-8
    are quarantined with their line number."""
    import pyarrow.csv as pcsv

    src = task.source
    bad_rows: list[tuple[int, str, bytes]] = []

    def on_invalid(row) -> str:
        bad_rows.append((row.number or -1, f"expected {row.expected_columns} fields, got {row.actual_columns}",
                         (row.text or "").encode()))
        return "skip"

    with open_binary(task.path) as fh:
        data = fh.read()
    table = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(use_threads=False, block_size=1 << 24),
        parse_options=pcsv.ParseOptions(delimiter=src.csv_delimiter, invalid_row_handler=on_invalid,
                                        newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(check_utf8=False, strings_can_be_null=False),
    )
    # Line numbers: a CSV row can span lines; count newlines before each row start would need
    # a second parser, so rows are numbered as data rows + 1 for the header (exact for the
    # usual one-line rows).
    row_nos = np.arange(2, table.num_rows + 2, dtype=np.int64)
    # Validate UTF-8 per string column; invalid cells quarantine their row.
    invalid = np.zeros(table.num_rows, bool)
    invalid_field: dict[int, str] = {}
    for name in table.column_names:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            for i, v in enumerate(col.cast(pa.binary()).to_pylist()):
                if v is not None:
                    try:
                        v.decode("utf-8")
                    except UnicodeDecodeError:
                        invalid[i] = True
                        invalid_field.setdefault(i, name)
    q = None
    if bad_rows or invalid.any():
        idx = np.flatnonzero(invalid)
        sub = table.take(pa.array(idx)) if len(idx) else None
        q = _quarantine_batch(
            src.name, task.path,
            [r for r, _, _ in bad_rows] + row_nos[idx].tolist(),
            [m for _, m, _ in bad_rows] + ["invalid UTF-8"] * len(idx),
            [None] * len(bad_rows) + [invalid_field[int(i)] for i in idx],
            [t for _, _, t in bad_rows] + ([_row_bytes(sub, j) for j in range(len(idx))] if sub is not None else []),
        )
        table = table.filter(pa.array(~invalid))
        row_nos = row_nos[~invalid]
    if q is not None:
        yield None, q
    for b, qq in _table_to_batches(task, table, 0, batch_rows, row_numbers=row_nos):
        yield b, qq


def _row_bytes(table: pa.Table, i: int) -> bytes:
    row = table.slice(i, 1)
    vals = []
    for c in row.columns:
        v = c.cast(pa.binary()).to_pylist()[0] if pa.types.is_string(c.type) else str(c.to_pylist()[0]).encode()
        vals.append(v or b"")
    return b",".join(vals)


def read_task(task: ReadTask, batch_rows: int) -> Iterator[tuple[pa.RecordBatch | None, pa.RecordBatch | None]]:
    """All batches of one read task (runs on a worker)."""
    fmt = task.format
    if fmt == "jsonl":
        yield from _read_jsonl(task, batch_rows)
    elif fmt == "hf_hub":
        yield from _dict_records_to_batches(task, _iter_hub(task.source), batch_rows)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(task.path)
        if task.part is None:
            yield from _table_to_batches(task, pf.read(), 0, batch_rows)
        else:
            first = sum(pf.metadata.row_group(i).num_rows for i in range(task.part))
            yield from _table_to_batches(task, pf.read_row_group(task.part), first, batch_rows)
    elif fmt == "arrow":
        yield from _table_to_batches(task, _open_ipc(task.path).read_all(), 0, batch_rows)
    elif fmt == "csv":
        yield from _iter_csv(task, batch_rows)
    elif fmt == "hf_disk":
        ds = _load_hf_disk(task.source, task.path)
        first = 0
        for table in ds.with_format("arrow").iter(batch_size=batch_rows):
            yield from _table_to_batches(task, table, first, batch_rows)
            first += table.num_rows
    else:  # validated earlier; kept as a guard for hand-made tasks
        raise ValueError(f"unknown format {fmt!r} for {task.path}")


class _ReadDoFn(beam.DoFn):
    def __init__(self, batch_rows: int, count: bool):
        self.batch_rows = batch_rows
        self.count = count

    def process(self, task: ReadTask):
        n_ok = n_bad = 0
        try:
            for batch, q in read_task(task, self.batch_rows):
                if q is not None and q.num_rows:
                    n_bad += q.num_rows
                    if self.count:
                        count_by_source("quarantined", q)
                        count_by_source("read", q)
                    yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, q)
                if batch is not None and batch.num_rows:
                    n_ok += batch.num_rows
                    if self.count:
                        count_by_source("read", batch)
                    if n_ok // _PROGRESS_ROWS != (n_ok - batch.num_rows) // _PROGRESS_ROWS:
                        log.info("reading %s: %d rows so far", task.path, n_ok)
                    yield batch
        except (OSError, EOFError, pa.ArrowException, ValueError) as exc:
            # A file that breaks mid-read (truncated gzip, corrupt Parquet page): the rows
            # read so far were emitted; the failure itself is a quarantine record, and the
            # bad-fraction check decides whether the run fails.
            n_bad += 1
            if self.count:
                counter(f"quarantined/{task.source.name}").inc()
                counter(f"read/{task.source.name}").inc()
                counter(f"unreadable_files/{task.source.name}").inc()
            yield beam.pvalue.TaggedOutput(
                QUARANTINE_TAG,
                _quarantine_batch(task.source.name, task.path, [-1], [f"file unreadable: {type(exc).__name__}: {exc}"],
                                  [None], [b""]),
            )
        log.info("read %s: %d rows, %d quarantined", task.path, n_ok, n_bad)


class ReadSources(beam.PTransform):
    """Sources -> (canonical batches, quarantine batches). See the module docstring."""

    def __init__(self, tasks: list[ReadTask], batch_rows: int, label: str = "Ingest", count: bool = True):
        super().__init__(label=label)
        self.tasks = tasks
        self.batch_rows = batch_rows
        self.count = count

    def expand(self, pbegin):
        res = (
            pbegin
            | "Tasks" >> beam.Create(self.tasks, reshuffle=False)
            # Spread files over workers (the DirectRunner keeps one bundle otherwise).
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadDoFn(self.batch_rows, self.count)).with_outputs(QUARANTINE_TAG, main="rows")
        )
        return res["rows"], res[QUARANTINE_TAG]


def read_side_source(pipeline: beam.Pipeline, recipe: Recipe, sources: list[Source], label: str,
                     file_offset: int = 1 << 20):
    """Read auxiliary sources (a target domain, benchmarks) as canonical batches, uncounted.

    Their file indexes start at `file_offset`, so their `__row_key`s never collide with the
    main input's.
    """
    tasks, _ = plan_reads(recipe, sources, file_offset=file_offset, with_hashes=False)
    batches, _q = pipeline | ReadSources(tasks, recipe.batch_rows, label=label, count=False)
    return batches


def read_source_table(recipe: Recipe, source: Source) -> pa.Table:
    """Read a (small) auxiliary source eagerly into one canonical table, driver side."""
    tasks, _ = plan_reads(recipe, [source], with_hashes=False)
    out = []
    for t in tasks:
        for b, _q in read_task(t, recipe.batch_rows):
            if b is not None:
                out.append(rows.drop_internal(b))
    if not out:
        return pa.table({n: pa.array([], pa.string()) for n in (rows.ID, rows.TEXT)})
    return pa.Table.from_batches(out) if len({b.schema for b in out}) == 1 else pa.concat_tables(
        [pa.Table.from_batches([b]) for b in out], promote_options="permissive")


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
