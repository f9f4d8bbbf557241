"""Corrupt-input fuzzing (issue 10): reader-independent ground truth.

* `truth(case)` says what the file really holds, without the project's readers: the number
  of records, or None when the container is broken (a truncated/corrupt compressed stream,
  an Arrow/Parquet file that does not read or validate) and the file must fail loudly.
* `expected_row_numbers(case, n)` gives the row numbers its records must carry, where the
  format fixes them.
"""

from __future__ import annotations

import io
import json
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # Arrow IPC end-of-stream marker


def _decompress(path: str) -> tuple[bytes, bool]:
    """(the bytes as far as they decompress, whether the whole stream is intact)."""
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        out, rest = [], raw
        while rest:
            if not rest.strip(b"\x00") and out:
                break  # NUL padding after the last member is allowed (gzip(1) accepts it)
            d = zlib.decompressobj(31)
            try:
                out.append(d.decompress(rest))
            except zlib.error:
                return b"".join(out), False
            if not d.eof:
                return b"".join(out), False
            rest = d.unused_data
        return b"".join(out), bool(out) or not raw
    if path.endswith(".zst"):
        out, rest = [], raw
        dctx = zstandard.ZstdDecompressor()
        while rest:
            d = dctx.decompressobj()
            try:
                out.append(d.decompress(rest))
            except zstandard.ZstdError:
                return b"".join(out), False
            if not d.eof:
                return b"".join(out), False
            rest = d.unused_data
        return b"".join(out), bool(out) or not raw
    return raw, True


def _jsonl_lines_held(path: str) -> list[int] | None:
    """The 1-based numbers of the non-blank lines, or None when the stream is broken."""
    data, intact = _decompress(path)
    if not intact:
        return None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    # Blank: JSON whitespace only (space, tab, CR). Anything else is a record, good or bad.
    return [i for i, ln in enumerate(lines, 1) if ln.strip(b" \t\r")]


def _jsonl_truth(path: str) -> int | None:
    held = _jsonl_lines_held(path)
    return None if held is None else len(held)


def _csv_truth(path: str) -> int | None:
    import csv

    data, intact = _decompress(path)
    if not intact:
        return None
    # A second CSV parser (the standard library's) counts the records; latin-1 keeps every
    # byte, and UTF-8 never puts a delimiter, quote or newline byte inside a character.
    csv.field_size_limit(sys.maxsize)
    rows = [r for r in csv.reader(io.StringIO(data.decode("latin-1"), newline=""), strict=False) if r]
    return max(0, len(rows) - 1)


def _validates(t: pa.Table) -> bool:
    """Structurally valid (offsets, sizes); invalid UTF-8 in a string column is allowed
    (such rows must be quarantined, not fail the file)."""
    try:
        t.validate(full=True)
        return True
    except pa.ArrowInvalid:
        pass
    try:
        cols = [c.cast(pa.binary()) if pa.types.is_string(c.type) else c for c in t.columns]
        pa.table(cols, names=t.column_names).validate(full=True)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False


def _ipc_truth(path: str, stream: bool) -> int | None:
    try:
        data = Path(path).read_bytes()
        if stream:
            if not data.endswith(EOS):
                return None  # the stream does not end: truncated
            t = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
        else:
            t = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    except (pa.ArrowException, OSError, ValueError):
        return None
    return t.num_rows if _validates(t) else None


def _parquet_truth(path: str) -> int | None:
    try:
        t = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError, ValueError):
        return None
    return t.num_rows if _validates(t) else None


def _hf_truth(path: str) -> int | None:
    try:
        state = json.loads(Path(path, "state.json").read_text())
        json.loads(Path(path, "dataset_info.json").read_text())
        files = [f["filename"] for f in state["_data_files"]]
    except (ValueError, KeyError, TypeError, OSError):
        return None
    total = 0
    for f in files:
        n = _ipc_truth(str(Path(path, f)), stream=True)
        if n is None:
            return None
        total += n
    return total


def truth(case: dict) -> int | None:
    """Records the file really holds, or None: the container is broken, the file must fail."""
    fmt, path = case["fmt"], case["path"]
    if fmt.startswith("jsonl"):
        return _jsonl_truth(path)
    if fmt == "csv":
        return _csv_truth(path)
    if fmt == "parquet":
        return _parquet_truth(path)
    if fmt == "arrow":
        return _ipc_truth(path, case.get("stream", False))
    return _hf_truth(path)


def expected_row_numbers(case: dict, n: int | None) -> list[int] | None:
    """The row numbers the records must carry (rows and quarantine together), where the
    format fixes them: JSONL, the non-blank lines (from 1); columnar formats, 0..n-1. None
    for CSV (a quoted value may span lines) or a broken file."""
    if n is None or case["fmt"] == "csv":
        return None
    if case["fmt"].startswith("jsonl"):
        return _jsonl_lines_held(case["path"])
    return list(range(n))

