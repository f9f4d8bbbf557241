"""Column helpers every stage needs: set-or-append, sorted-key membership, numpy views."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def as_array(values: Any, type: pa.DataType | None = None) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, type=type)


def set_column(batch: pa.RecordBatch, name: str | pa.Field, values: Any) -> pa.RecordBatch:
    """`batch` with column `name` replaced, or appended when it is new."""
    arr = as_array(values)
    key = name.name if isinstance(name, pa.Field) else name
    idx = batch.schema.get_field_index(key)
    return batch.set_column(idx, name, arr) if idx >= 0 else batch.append_column(name, arr)


def set_columns(batch: pa.RecordBatch, columns: dict[str, Any] | None) -> pa.RecordBatch:
    for name, values in (columns or {}).items():
        batch = set_column(batch, name, values)
    return batch


def drop_columns(batch: pa.RecordBatch, names: tuple[str, ...] | list[str]) -> pa.RecordBatch:
    """`batch` without those of `names` it has (missing ones are fine)."""
    present = [n for n in names if n in batch.schema.names]
    return batch.drop_columns(present) if present else batch


def runs_of(labels: np.ndarray):
    """(label, row indices) for each distinct label, in label order: one stable sort and
    slices, where a mask per label would scan every row once per label (shuffle buckets)."""
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(order)], strict=True):
        if hi > lo:
            yield labels[order[lo]], order[lo:hi]


def find_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hit mask, position in `sorted_keys`) for each of `keys` — the "row key in a sorted
    set" lookup that global stages use to apply a side input to a batch."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys, pos


def member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    return find_sorted(keys, sorted_keys)[0]


def numpy(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A primitive column as NumPy (nulls become NaN for floats)."""
    return batch.column(name).to_numpy(zero_copy_only=False)


def strings(batch: pa.RecordBatch, name: str) -> np.ndarray:
    return np.asarray(batch.column(name).to_pylist(), dtype=object)
