"""CSV (plain or .gz/.zst): pyarrow's reader, the header checked before the run.

Rows with the wrong number of fields and rows with bytes that are not UTF-8 are quarantined
with their line number. Rows are numbered as data rows + 1 for the header (the 1-based line
number, exact for the usual one-line rows: a quoted value may span lines, and counting them
would need a second parser).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from thresher.io.compression import open_binary
from thresher.io.readers.base import Reader, needed_fields
from thresher.io.records import quarantine_batch, table_to_batches
from thresher.io.tasks import Batches, InputError, ReadTask
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
        missing = [f for f in needed_fields(source) if f not in cols]
        if missing:
            raise InputError(
                [f"sources.{source.name}: {path}: header has no column {missing[0]!r} (columns: {cols})"]
            )
        return [None]

    def peek_fields(self, source: Source, path: str) -> set[str] | None:
        header = read_header(path, source.csv_delimiter)
        return None if header is None else set(header)

    def read(self, task: ReadTask, batch_rows: int) -> Batches:
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
            # UTF-8 is checked below, per row, so that one bad cell quarantines one row.
            convert_options=pcsv.ConvertOptions(check_utf8=False, strings_can_be_null=False),
        )
        row_nos = np.arange(2, table.num_rows + 2, dtype=np.int64)
        invalid, invalid_field = _invalid_utf8_rows(table)
        q = None
        if bad_rows or invalid.any():
            idx = np.flatnonzero(invalid)
            sub = table.take(pa.array(idx))
            q = quarantine_batch(
                src.name, task.path,
                [r for r, _, _ in bad_rows] + row_nos[idx].tolist(),
                [m for _, m, _ in bad_rows] + ["invalid UTF-8"] * len(idx),
                [None] * len(bad_rows) + [invalid_field[int(i)] for i in idx],
                [t for _, _, t in bad_rows] + [_row_bytes(sub, j) for j in range(len(idx))],
            )
            table = table.filter(pa.array(~invalid))
            row_nos = row_nos[~invalid]
        if q is not None:
            yield None, q
        yield from table_to_batches(task, table, 0, batch_rows, row_numbers=row_nos)


def _invalid_utf8_rows(table: pa.Table) -> tuple[np.ndarray, dict[int, str]]:
    """Rows with a string cell that is not UTF-8, and the first such column of each."""
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
    return invalid, invalid_field


def _row_bytes(table: pa.Table, i: int) -> bytes:
    """A quarantined row's cells, comma-joined (the original line is not kept by pyarrow)."""
    row = table.slice(i, 1)
    vals = []
    for c in row.columns:
        v = c.cast(pa.binary()).to_pylist()[0] if pa.types.is_string(c.type) else str(c.to_pylist()[0]).encode()
        vals.append(v or b"")
    return b",".join(vals)
