"""JSONL (plain, .gz, .zst): parsed a block at a time by pyarrow's JSON reader, per line only
for a block it cannot take exactly.

A block of whole lines that pyarrow's (C++, multi-threaded) JSON reader parses cleanly becomes
Arrow directly. Any block it cannot take exactly — a malformed line, invalid UTF-8 (which it
accepts without a word), mixed types, blank lines (line numbers would shift), values it would
reinterpret (timestamps), nesting deeper than `records.MAX_NESTING` — goes through the per-line
path (orjson), which pins each bad record to its line number. Both paths give the same rows
(tests/io/test_jsonl.py). Rows are numbered by line, from 1.

Accounting: the records a file holds are its non-blank lines, counted as the blocks are split,
before anything is parsed (`tally.records`). A block that fails after parsing is read again
line by line, and a line that still fails is quarantined on its own: reading goes on. A file
that breaks (truncated or corrupt stream) raises `SourceReadError` naming the last whole line
read and the byte offset, after yielding every row before the break.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pyarrow as pa
import pyarrow.json as pajson

from thresher.io.compression import open_binary
from thresher.io.readers.base import Reader, check_template
from thresher.io.records import Record, quarantine_batch, records_to_batches, table_to_batches
from thresher.io.tasks import Batches, ReadTally, ReadTask, SourceReadError
from thresher.io.validity import MAX_NESTING
from thresher.recipe.schema import Source

log = logging.getLogger("thresher.ingest")

JSON_BLOCK = 8 << 20  # decompressed bytes of JSONL parsed at a time
FAST_JSON = True  # tests switch it off to compare the two paths
# A line with more opening brackets than this could nest deep enough to overflow the stack of
# pyarrow's (recursive) JSON parser, which crashes the process; such a block goes per line,
# where orjson stops at depth 1024 with an error.
_BRACKET_GUARD = 1000
_NOT_BRACKET_OR_NEWLINE = bytes(sorted(set(range(256)) - set(b"{[\n")))
_JSON_SPACE = b" \t\r"  # what a blank line may hold (JSON whitespace; the newline is the separator)
PEEK_RECORDS, PEEK_BYTES = 100, 1 << 20  # what `check` reads to learn a file's fields


class JsonlReader(Reader):
    def check(self, source: Source, path: str) -> list[int | None]:
        # Records may differ from line to line: one without the text field is quarantined on
        # its own. A text_template field none of the first records has is a typo, though.
        if source.text_template is not None:
            check_template(source, path, _first_fields(path))
        return [None]

    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        first_line = 1
        pending = b""
        tally.counts = True
        with open_binary(task.path, tally) as fh:
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
                    # Its newlines and opening brackets, in one pass: the line count, and a
                    # bound on each line's depth for the block parser's guard.
                    shape = chunk.translate(None, _NOT_BRACKET_OR_NEWLINE)
                    n_lines = shape.count(b"\n")
                    yield from _chunk_batches(task, chunk, shape, first_line, n_lines, batch_rows, tally)
                    first_line += n_lines
                if error is not None:
                    raise SourceReadError(f"{task.path}: cannot be read past line {first_line - 1} "
                                          f"(file byte {tally.nbytes}): {error}") from None
                if last:
                    break
        tally.hashed = True

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


def _first_fields(path: str) -> set[str] | None:
    """The keys of the first records that are JSON objects; None when there are none."""
    fields: set[str] = set()
    seen = size = 0
    with open_binary(path) as fh:
        for raw in fh:
            size += len(raw)
            if seen >= PEEK_RECORDS or size > PEEK_BYTES:
                break
            if raw.strip():
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    fields.update(obj)
                    seen += 1
    return fields if seen else None


def _chunk_batches(task: ReadTask, chunk: bytes, shape: bytes, first_line: int, n_lines: int, batch_rows: int,
                   tally: ReadTally) -> Batches:
    """One block of whole lines, through the block parser if it takes it, else line by line."""
    table = parse_json_block(task.source, chunk, n_lines, shape) if FAST_JSON else None
    if table is not None:
        lines: list[bytes] = []

        def raw_by_row(row_no: int) -> bytes:
            # Split only when a row is quarantined (an empty text after normalisation).
            if not lines:
                lines.extend(chunk.split(b"\n"))
            return lines[row_no - first_line]

        try:
            # Whole before yielding, so that a failure part-way leaves nothing half-emitted.
            out = list(table_to_batches(task, table, first_line, batch_rows, raw_by_row=raw_by_row,
                                        check_utf8=False))
        except Exception as exc:  # noqa: BLE001 - any failure: the per-line path pins it down
            log.warning("%s: lines %d-%d: block failed (%s: %s); reading it line by line", task.path,
                        first_line, first_line + n_lines - 1, type(exc).__name__, exc)
        else:
            tally.records += n_lines  # the parser took the block: no blank lines in it
            yield from out
            return
    records = list(_iter_lines(chunk, first_line))
    tally.records += len(records)
    try:
        out = list(records_to_batches(task, iter(records), batch_rows))
    except Exception:  # noqa: BLE001 - one record broke its batch: convert them one by one
        out = [pair for rec in records for pair in _one_record(task, rec)]
    yield from out


def _one_record(task: ReadTask, rec: Record) -> Batches:
    """A record on its own; quarantined with the reason when it cannot become a row."""
    try:
        yield from list(records_to_batches(task, iter([rec]), 1))
    except Exception as exc:  # noqa: BLE001 - whatever it is, the record is kept with the reason
        yield None, quarantine_batch(task.source.name, task.path, [rec[0]],
                                     [f"cannot be converted: {type(exc).__name__}: {exc}"], [None], [rec[1]])


def _read_blocks(fh, piece: int = 64 << 10) -> Iterator[tuple[bytes, BaseException | None]]:
    """(block, error) pairs of about JSON_BLOCK bytes, read in small pieces so that a file
    that breaks (truncated gzip) loses at most the last piece; the final pair has an empty
    block (end of file) or the error."""
    buf: list[bytes] = []
    size = 0
    while True:
        try:
            # read1: one read of the stream, so the bytes decoded before a break are returned
            # before it raises (read() would drop them with the error).
            data = fh.read1(piece)
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


def parse_json_block(src: Source, chunk: bytes, n_lines: int, shape: bytes | None = None) -> pa.Table | None:
    """The block as a table, or None when the per-line path must take it. `shape`: the block's
    newlines and opening brackets (`_NOT_BRACKET_OR_NEWLINE` deleted), when the caller has it."""
    if _may_nest_too_deep(chunk.translate(None, _NOT_BRACKET_OR_NEWLINE) if shape is None else shape):
        return None
    try:
        table = pajson.read_json(io.BytesIO(chunk), read_options=pajson.ReadOptions(block_size=1 << 20))
        table.validate(full=True)  # pyarrow's JSON reader passes invalid UTF-8 through
    except (pa.ArrowException, ValueError):  # ValueError: a key that is not UTF-8
        return None
    # A blank line makes the row count differ from the line count (line numbers would
    # shift), so it sends the block down the per-line path too.
    if table.num_rows != n_lines or any(_has_timestamp(f.type) or _type_depth(f.type) >= MAX_NESTING
                                        for f in table.schema):
        return None
    if src.text_template is None:
        f = src.text_field
        if f not in table.column_names or not pa.types.is_string(table.schema.field(f).type) \
                or table.column(f).null_count:
            return None  # missing or non-string text in some row: the per-line path says which
    return table


def _may_nest_too_deep(shape: bytes) -> bool:
    """Whether some line has more than `_BRACKET_GUARD` opening brackets (a bound on its
    depth that strings cannot lower). `shape`: the block's newlines and opening brackets."""
    return len(shape) > _BRACKET_GUARD and max(map(len, shape.split(b"\n"))) > _BRACKET_GUARD


def _type_depth(t: pa.DataType) -> int:
    """How deeply a column type nests lists and structs (a JSON value's depth)."""
    depth, stack = 0, [(t, 0)]
    while stack:
        t, d = stack.pop()
        depth = max(depth, d)
        stack.extend((t.field(i).type, d + 1) for i in range(t.num_fields))
    return depth


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
        if not raw.strip(_JSON_SPACE):  # a vertical tab or form feed is a (bad) record, not a blank
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
