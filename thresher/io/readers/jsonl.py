"""JSONL (plain, .gz, .zst): parsed a block at a time by pyarrow's JSON reader, per line only
for a block it cannot take exactly.

A block of whole lines that pyarrow's (C++, multi-threaded) JSON reader parses cleanly becomes
Arrow directly. Any block it cannot take exactly — a malformed line, invalid UTF-8, mixed
types, blank lines (line numbers would shift), values it would reinterpret (timestamps) — goes
through the per-line path (orjson), which pins each bad record to its line number. Both paths
give the same rows (tests/io/test_jsonl.py). Rows are numbered by line, from 1.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import orjson
import pyarrow as pa
import pyarrow.json as pajson

from thresher.io.compression import open_binary
from thresher.io.readers.base import Reader
from thresher.io.records import Record, records_to_batches, table_to_batches
from thresher.io.tasks import Batches, ReadTask
from thresher.recipe.schema import Source

JSON_BLOCK = 8 << 20  # decompressed bytes of JSONL parsed at a time
FAST_JSON = True  # tests switch it off to compare the two paths


class JsonlReader(Reader):
    def check(self, source: Source, path: str) -> list[int | None]:
        # Records may differ from line to line: one without the text field is quarantined
        # on its own, so there is nothing to check before the run.
        return [None]

    def read(self, task: ReadTask, batch_rows: int) -> Batches:
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
                    yield from _chunk_batches(task, chunk, first_line, n_lines, batch_rows)
                    first_line += n_lines
                if error is not None:
                    raise error
                if last:
                    break

    def peek_fields(self, source: Source, path: str) -> set[str] | None:
        """The first record's keys (empty when it is not a JSON object)."""
        with open_binary(path) as fh:
            for raw in fh:
                if raw.strip():
                    try:
                        obj = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        return set()
                    return set(obj) if isinstance(obj, dict) else set()
        return None


def _chunk_batches(task: ReadTask, chunk: bytes, first_line: int, n_lines: int, batch_rows: int) -> Batches:
    """One block of whole lines, through the block parser if it takes it, else line by line."""
    table = parse_json_block(task.source, chunk, n_lines) if FAST_JSON else None
    if table is None:
        yield from records_to_batches(task, _iter_lines(chunk, first_line), batch_rows)
        return
    lines: list[bytes] = []

    def raw_by_row(row_no: int) -> bytes:
        # Split only when a row is quarantined (an empty text after normalisation).
        if not lines:
            lines.extend(chunk.split(b"\n"))
        return lines[row_no - first_line]

    yield from table_to_batches(task, table, first_line, batch_rows, raw_by_row=raw_by_row)


def _read_blocks(fh, piece: int = 64 << 10) -> Iterator[tuple[bytes, BaseException | None]]:
    """(block, error) pairs of about JSON_BLOCK bytes, read in small pieces so that a file
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
        if size >= JSON_BLOCK:
            yield b"".join(buf), None
            buf, size = [], 0


def parse_json_block(src: Source, chunk: bytes, n_lines: int) -> pa.Table | None:
    """The block as a table, or None when the per-line path must take it."""
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


def _iter_lines(chunk: bytes, first_line: int) -> Iterator[Record]:
    """The per-line path: each non-blank line parsed on its own, or its error."""
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
