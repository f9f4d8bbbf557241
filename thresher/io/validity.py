"""What makes a value unstorable, checked per row: strings that are not UTF-8 (Arrow's readers
pass them through unchecked, and a training job's reader then fails on them) and nesting
deeper than Arrow can read back.

Used by `records` (every reader's rows) and the JSONL reader's block checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# Records nested deeper than this (the record object is level 1) are quarantined: Arrow's IPC
# reader refuses types nested 64 deep, so deeper rows would make shards no one can read; 32
# leaves room for the list/struct wrapping stages may add.
MAX_NESTING = 32


def nesting_depth(obj: Any, limit: int = MAX_NESTING) -> int:
    """How deeply `obj` nests dicts and lists (a scalar is 0), counted without recursion and
    only up to `limit` + 1 (enough to say "too deep")."""
    depth = 0
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, (list, tuple)):
            continue
        depth = max(depth, d)
        if depth > limit:
            return depth
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list, tuple)))
    return depth


def invalid_utf8_rows(table: pa.Table) -> tuple[np.ndarray, dict[int, str]]:
    """Rows with a string (at any nesting level) that is not UTF-8, and the first such column
    of each. Readers that trust their bytes (pyarrow's JSON, CSV, IPC and Parquet readers
    do not check) call this so one bad value quarantines one row, not the run."""
    invalid = np.zeros(table.num_rows, bool)
    invalid_field: dict[int, str] = {}
    for name in table.column_names:
        col = table.column(name)
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid as exc:
            if "UTF8" not in str(exc):
                raise  # broken offsets or buffers: the file is corrupt, and row by row would crash
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        for i in range(len(arr)):
            try:
                # take(), not slice(): a sliced struct still validates its children whole.
                arr.take([i]).validate(full=True)
            except pa.ArrowInvalid:
                invalid[i] = True
                invalid_field.setdefault(i, name)
    return invalid, invalid_field


def row_cells_bytes(table: pa.Table, i: int) -> bytes:
    """A row's cells as bytes, comma-joined, without decoding strings (which may not be UTF-8;
    a nested value is written as its type's name)."""
    vals = []
    for c in table.slice(i, 1).columns:
        if pa.types.is_string(c.type) or pa.types.is_large_string(c.type):
            v = c.cast(pa.binary()).to_pylist()[0]
        elif pa.types.is_nested(c.type):
            v = f"<{c.type}>".encode()
        else:
            v = str(c.to_pylist()[0]).encode()
        vals.append(v or b"")
    return b",".join(vals)
