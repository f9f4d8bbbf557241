"""A PyTorch `IterableDataset` over a finished run's shards, split across ranks and workers.

    from thresher.load import TorchShards            # imports torch only when named
    ds = TorchShards(OUT, columns=["input_ids", "labels"], format="torch")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)

Every (rank, DataLoader worker) pair reads a disjoint part and all of them together read every
row exactly once. `rank`/`world_size` default to `torch.distributed`'s when it is initialised
(else 0 / 1). With R ranks of W workers there are R*W readers: when the shard count divides by
R*W each reader takes whole shards (shard i goes to reader i mod R*W: no shard is opened twice);
otherwise reader k takes the global rows [floor(k*T/(R*W)), floor((k+1)*T/(R*W))) of the T rows
in shard order, so shares differ by at most one row. Shard row counts come from the manifest,
so no reader opens a shard it does not read.

Arrow shards are memory-mapped (the page cache holds them once, however many workers read);
Parquet shards are read one row group at a time. Rows come out in shard order; shuffle in
the training loop (or use a buffer) if the job wants another order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from thresher.load import Verify, load_manifest, read_shard, reader_plan, shard_entries, shard_paths


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from `torch.distributed` when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TorchShards(IterableDataset):
    """Rows of a run's shards as dicts: Python values (`format="python"`, lists for list
    columns) or tensors (`format="torch"`; string columns stay strings)."""

    def __init__(self, out_dir: str, *, rank: int | None = None, world_size: int | None = None,
                 columns: list[str] | None = None, format: Literal["python", "torch"] = "python",  # noqa: A002
                 batch_rows: int = 1024, verify: Verify = "size", split: str | None = None):
        super().__init__()
        manifest = load_manifest(out_dir)  # resolved once: every worker reads this snapshot
        self.paths = shard_paths(out_dir, manifest, verify, split)
        self.rows = [int(s["rows"]) for s in shard_entries(manifest, split)]
        if rank is None or world_size is None:
            r, w = dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size}): give 0 <= rank < world_size")
        self.rank, self.world_size = rank, world_size
        self.columns = list(columns) if columns is not None else None
        if format not in ("python", "torch"):
            raise ValueError(f"format {format!r}: give 'python' or 'torch'")
        self.format = format
        self.batch_rows = batch_rows

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    def plan(self, reader: int, readers: int) -> list[tuple[int, int, int]]:
        """(shard index, first row, end row) that reader `reader` of `readers` reads."""
        return reader_plan(self.rows, reader, readers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        readers = self.world_size * workers
        for shard, start, stop in self.plan(self.rank * workers + worker, readers):
            for batch in _batches(self.paths[shard], start, stop, self.columns, self.batch_rows):
                yield from self._rows(batch)

    def _rows(self, batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        if self.format == "torch":
            cols = {k: _tensors(batch.column(k), v) for k, v in cols.items()}
        names = list(cols)
        for i in range(batch.num_rows):
            yield {k: cols[k][i] for k in names}


def _tensors(arr: pa.Array, values: list[Any]) -> list[Any]:
    """One tensor per row: a numeric column (or a list column whose rows all have one length,
    like packed `input_ids`) is converted once, as a whole, and split into row views."""
    t = arr.type
    if arr.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return list(torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy()).unbind(0))
    if arr.null_count == 0 and (pa.types.is_list(t) or pa.types.is_large_list(t)) and len(arr):
        lengths = pc.list_value_length(arr).to_numpy()
        inner = arr.flatten()
        if (lengths == lengths[0]).all() and inner.null_count == 0 and (
                pa.types.is_integer(inner.type) or pa.types.is_floating(inner.type)):
            flat = inner.to_numpy(zero_copy_only=False).copy()
            return list(torch.from_numpy(flat.reshape(len(arr), int(lengths[0]))).unbind(0))
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        dtype = torch.from_numpy(np.empty(0, t.to_pandas_dtype())).dtype  # the column's own width
        return [None if v is None else torch.tensor(v, dtype=dtype) for v in values]
    return values  # strings and structs: as they are


def _batches(path: str, start: int, stop: int, columns: list[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Rows [start, stop) of one shard, in record batches of at most `batch_rows`."""
    if path.endswith(".parquet"):
        yield from _parquet_batches(path, start, stop, columns, batch_rows)
        return
    table = read_shard(path)
    if columns is not None:
        table = table.select(columns)
    yield from table.slice(start, stop - start).to_batches(max_chunksize=batch_rows)


def _parquet_batches(path: str, start: int, stop: int, columns: list[str] | None,
                     batch_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    from thresher.io import fs

    pf = pq.ParquetFile(fs.arrow_file(path))
    offset = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        a, b = max(start, offset), min(stop, offset + n)
        if b > a:
            part = pf.read_row_group(g, columns=columns).slice(a - offset, b - a)
            yield from part.to_batches(max_chunksize=batch_rows)
        offset += n
        if offset >= stop:
            break
