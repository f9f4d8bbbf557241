"""CSV (plain or .gz/.zst): pyarrow's reader, the header checked before the run.

Rows with the wrong number of fields and rows with bytes that are not UTF-8 are quarantined
with their line number. Rows are numbered as data rows + 1 for the header, the malformed rows
pyarrow skipped included (the 1-based line number, exact for the usual one-line rows: a
quoted value may span lines, and counting them would need a second parser).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from thresher.io.compression import open_binary
from thresher.io.readers.base import Reader, check_template, needed_fields
from thresher.io.records import quarantine_batch, table_to_batches
from thresher.io.tasks import Batches, InputError, ReadTally, ReadTask, SourceReadError
from thresher.io.validity import invalid_utf8_rows, row_cells_bytes
from thresher.recipe.schema import Source


def read_header(path: str, delimiter: str = ",") -> list[str] | None:
    """The column names of a CSV file as pyarrow's reader will see them (quoting, a quoted
    delimiter or newline, a UTF-8 BOM, blank lines before the header), or None for a file
    with no header."""
    with open_binary(path) as fh, io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="") as text:
        return next((row for row in csv.reader(text, delimiter=delimiter) if row), None)


class CsvReader(Reader):
    def check(self, source: Source, path: str) -> list[int | None]:
        cols = read_header(path, source.csv_delimiter) or []
        check_template(source, path, None)  # its fields are checked below, with the header's words
        missing = [f for f in needed_fields(source) if f not in cols]
        if missing:
            raise InputError(
                [f"sources.{source.name}: {path}: header has no column {missing[0]!r} (columns: {cols})"]
            )
        return [None]

    def peek_fields(self, source: Source, path: str) -> set[str] | None:
        header = read_header(path, source.csv_delimiter)
        return None if header is None else set(header)

    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        src = task.source
        bad_rows: list[tuple[int, str, bytes]] = []

        def on_invalid(row) -> str:
            bad_rows.append((row.number or -1, f"expected {row.expected_columns} fields, got {row.actual_columns}",
                             (row.text or "").encode()))
            return "skip"

        with open_binary(task.path, tally) as fh:
            data = fh.read()
        tally.hashed = True
        # pyarrow decodes a malformed row's text before it calls the handler, and fails (with
        # a traceback on stderr) on one that is not UTF-8: for a file with bytes that are not
        # UTF-8, Python's csv module finds the malformed rows and pyarrow gets the rest.
        table = None
        if _is_utf8(data):
            try:
                table = _parse(data, src.csv_delimiter, on_invalid)
                row_nos = _line_numbers(table.num_rows, [r for r, _, _ in bad_rows])
            except pa.ArrowInvalid as exc:
                if "CSV parse error" not in str(exc):
                    raise
                bad_rows = []
        if table is None:
            try:
                data, bad_rows, row_nos = _drop_malformed(data, src.csv_delimiter)
            except csv.Error as exc:
                raise SourceReadError(f"{task.path}: cannot be parsed as CSV: {exc}") from None
            table = _parse(data, src.csv_delimiter, on_invalid)
        invalid, invalid_field = invalid_utf8_rows(table)
        q = None
        if bad_rows or invalid.any():
            idx = np.flatnonzero(invalid)
            sub = table.take(pa.array(idx))
            q = quarantine_batch(
                src.name, task.path,
                [r for r, _, _ in bad_rows] + row_nos[idx].tolist(),
                [m for _, m, _ in bad_rows] + ["invalid UTF-8"] * len(idx),
                [None] * len(bad_rows) + [invalid_field[int(i)] for i in idx],
                [t for _, _, t in bad_rows] + [row_cells_bytes(sub, j) for j in range(len(idx))],
            )
            table = table.filter(pa.array(~invalid))
            row_nos = row_nos[~invalid]
        if q is not None:
            yield None, q
        yield from table_to_batches(task, table, 0, batch_rows, row_numbers=row_nos, check_utf8=False)


def _line_numbers(n_good: int, bad_lines: list[int]) -> np.ndarray:
    """The line numbers of the rows pyarrow kept: 2, 3, ... (after the header) less the lines
    of the malformed rows it skipped, so the rows after one keep their own numbers."""
    lines = np.arange(2, n_good + len(bad_lines) + 2, dtype=np.int64)
    skipped = [n for n in bad_lines if n > 0]
    if skipped:
        lines = lines[~np.isin(lines, skipped)]
    return lines[:n_good]


def _is_utf8(data: bytes) -> bool:
    try:
        pa.array([data], pa.large_binary()).cast(pa.large_string())  # checks, copies nothing
        return True
    except pa.ArrowInvalid:
        return False


def _parse(data: bytes, delimiter: str, on_invalid) -> pa.Table:
    return pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(use_threads=False, block_size=1 << 24),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid, newlines_in_values=True),
        # UTF-8 is checked per row, so that one bad cell quarantines one row.
        convert_options=pcsv.ConvertOptions(check_utf8=False, strings_can_be_null=False),
    )


def _drop_malformed(data: bytes, delimiter: str) -> tuple[bytes, list[tuple[int, str, bytes]], np.ndarray]:
    """(the header and well-formed rows re-written, the malformed rows as (line, reason, raw),
    the kept rows' line numbers). Latin-1 maps bytes to characters one to one, so any bytes
    pass through the csv module unchanged."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    reader = csv.reader(io.StringIO(data.decode("latin-1"), newline=""), delimiter=delimiter)
    bad: list[tuple[int, str, bytes]] = []
    lines: list[int] = []
    n_cols = None
    line = reader.line_num + 1
    for row in reader:
        if row:
            if n_cols is None:
                n_cols = len(row)
                writer.writerow(row)
            elif len(row) != n_cols:
                bad.append((line, f"expected {n_cols} fields, got {len(row)}",
                            delimiter.join(row).encode("latin-1")))
            else:
                writer.writerow(row)
                lines.append(line)
        line = reader.line_num + 1
    return out.getvalue().encode("latin-1"), bad, np.asarray(lines, np.int64)
