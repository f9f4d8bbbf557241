"""Keyed global steps: per-row decisions joined back to the batches that hold the rows.

A selector's `select_keyed(scored)` (see `selector.py`) works where the rows meet — grouped
by a content hash, a cluster id — and emits what it decided as `(batch key, part)` pairs, the
batch key being `batch_key(batch)` of the batch that holds the rows a part is about (carry
`batch_keys(batch)` along with the rows into the grouping). The template joins parts to
batches with a CoGroupByKey on that key, so each batch meets only its own parts: a worker
holds one batch and its decisions, never a broadcast of every row's decision.

On `runner: dask` the join runs in place (`engine/dask_graph.py` finds it by the
`Map(key_batch)` that keys the batches): the batches stay on their workers and the parts travel
to them, so record batches never cross the shuffle.

Batches are the unit of the join, not rows: one element per batch keeps Beam's per-element
cost off the row count, and batch boundaries (which only the runner's bundling decides) never
reach a decision, since `decide` looks rows up by `__row_key`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import rows

ROWS, PARTS = "rows", "parts"  # the two sides of the join


def batch_key(batch: pa.RecordBatch) -> int:
    """A batch's join key: its lowest `__row_key` (row keys are unique, so no two non-empty
    batches share one); 0 for an empty batch. Read as int64 so every key coder takes it."""
    if not batch.num_rows:
        return 0
    low = pc.min(batch.column(rows.ROW_KEY)).as_py()
    return int(np.array(low, np.uint64).view(np.int64))


def key_batch(batch: pa.RecordBatch) -> tuple[int, pa.RecordBatch]:
    return batch_key(batch), batch


def batch_keys(batch: pa.RecordBatch) -> np.ndarray:
    """`batch_key(batch)` once per row (int64): what a keyed step carries with each row."""
    return np.full(batch.num_rows, batch_key(batch), np.int64)


def split_by_batch(home: np.ndarray, /, **columns: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Row-aligned arrays and each row's batch key (`home`) -> one `(batch key, {name: that
    batch's rows})` part per batch key."""
    if not len(home):
        return
    order = np.argsort(home, kind="stable")
    home = home[order]
    starts = np.flatnonzero(np.r_[True, home[1:] != home[:-1]])
    ends = np.r_[starts[1:], len(home)]
    for s, e in zip(starts, ends, strict=True):
        yield int(home[s]), {name: col[order[s:e]] for name, col in columns.items()}


def merge_parts(parts: Iterable[dict[str, np.ndarray]], sort_by: str,
                empty: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch's parts -> one lookup: each field concatenated, all sorted by `sort_by` (for
    `columns.find_sorted`). `empty`: each field's dtype, for a batch that got no parts."""
    parts = list(parts)
    if not parts:
        return {name: np.zeros(0, dtype) for name, dtype in empty.items()}
    out = {name: np.concatenate([p[name] for p in parts]) for name in empty}
    order = np.argsort(out[sort_by], kind="stable")
    return {name: col[order] for name, col in out.items()}
