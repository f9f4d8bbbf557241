"""Shard writer: canonical batches -> deterministic, bounded Arrow IPC stream shards.

In:  a PCollection of record batches (any mix of schemas; they are unified).
Out: `OUT/<kind>/part-PPPPP-SSSSS.arrow` files (Arrow IPC *stream* format, which
     `datasets.Dataset.from_file`, `load_dataset("arrow")` and `pyarrow.dataset` all read),
     and a PCollection of one dict per shard (path, rows, bytes, sha256) that is also
     written to the run's work directory for the manifest.
Cost: one shuffle (GroupByKey) of the data; each partition is sorted in one worker, so a
     worker holds about input_bytes / partitions in memory.

Determinism: the row order is a seeded hash of each row's id (or the `sort_by` column), ties
broken by `__row_key` (the input order), and rows are partitioned by the top bits of that
hash, so shard names, contents and bytes depend only on the recipe, inputs and seed — never
on bundle order or the runner's parallelism. Every file is written to a temp name, fsynced
and renamed.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.core import rows
from thresher.core.counters import count_by_source
from thresher.io.atomic import write_atomic, write_bytes_atomic

ORDER = "__order"
def order_keys(ids: list[str], seed: int) -> np.ndarray:
    """Seeded 64-bit hash of each id: the shuffle order."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode("utf-8", "surrogatepass"), seed) for i in ids),
                       dtype=np.uint64, count=len(ids))


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    # Top 32 bits scaled to [0, partitions): monotone in the key, so concatenating
    # partitions in order keeps the global order.
    return ((keys >> np.uint64(32)) * np.uint64(partitions)) >> np.uint64(32)


def auto_partitions(input_bytes: int, compressed_factor: float = 3.0, per_partition: int = 128 << 20) -> int:
    """Partitions for `partitions: auto`: about 128 MiB of (estimated) rows each, 1..256."""
    return max(1, min(256, math.ceil(input_bytes * compressed_factor / per_partition)))


# ---------------------------------------------------------------------------------------
# Schema unification (a global combine, so every shard has the same schema)


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    fields: dict[str, pa.DataType] = {}
    for s in schemas:
        for f in s:
            if rows.is_internal(f.name) and f.name not in (rows.ROW_KEY, ORDER):
                continue
            t = f.type
            if f.name not in fields or pa.types.is_null(fields[f.name]):
                fields[f.name] = t
            elif not pa.types.is_null(t) and fields[f.name] != t:
                try:
                    fields[f.name] = pa.unify_schemas(
                        [pa.schema([(f.name, fields[f.name])]), pa.schema([(f.name, t)])],
                        promote_options="permissive",
                    ).field(f.name).type
                except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
                    # Same field, incompatible types across sources: keep it as JSON text.
                    fields[f.name] = pa.string()
    names = rows.column_order([n for n in fields if not rows.is_internal(n)])
    return pa.schema([pa.field(n, fields[n]) for n in names])


class UnifySchemas(beam.CombineFn):
    def create_accumulator(self):
        return []

    def add_input(self, acc, batch):
        s = batch.schema
        if not any(s.equals(x) for x in acc):
            acc.append(s)
        return acc

    def merge_accumulators(self, accs):
        out: list[pa.Schema] = []
        for acc in accs:
            for s in acc:
                if not any(s.equals(x) for x in out):
                    out.append(s)
        return [_unify(out)] if out else []

    def extract_output(self, acc):
        return _unify(acc) if acc else None


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give `table` exactly `schema`'s public columns (missing ones null), keeping internals."""
    cols, names = [], []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                col = _cast(col, f.type)
        else:
            col = pa.nulls(table.num_rows, f.type)
        cols.append(col)
        names.append(f.name)
    for n in table.column_names:
        if rows.is_internal(n):
            cols.append(table.column(n))
            names.append(n)
    return pa.Table.from_arrays(cols, names=names)


def _cast(col: pa.ChunkedArray, t: pa.DataType) -> pa.ChunkedArray:
    try:
        return pc.cast(col, t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        if pa.types.is_string(t):
            return pa.chunked_array([pa.array([None if v is None else (v if isinstance(v, str)
                                                                       else json.dumps(v, default=str))
                                               for v in col.to_pylist()], pa.string())])
        raise


# ---------------------------------------------------------------------------------------
# Writing


def write_ipc(path: str, table: pa.Table, compression: str | None, chunk_rows: int,
              ipc_format: str = "stream") -> str:
    """Write `table` as an Arrow IPC stream (or file), atomically. Returns the file's sha256."""
    options = pa.ipc.IpcWriteOptions(compression=None if compression in (None, "none") else compression)
    table = table.replace_schema_metadata(None).combine_chunks()

    def write(fh):
        sink = pa.PythonFile(fh, mode="w")
        new = pa.ipc.new_stream if ipc_format == "stream" else pa.ipc.new_file
        with new(sink, table.schema, options=options) as writer:
            writer.write_table(table, max_chunksize=chunk_rows)

    return write_atomic(path, write)


class _KeyByPartition(beam.DoFn):
    def __init__(self, seed: int, partitions: int, sort_by: str | None):
        self.seed = seed
        self.partitions = partitions
        self.sort_by = sort_by

    def process(self, batch: pa.RecordBatch):
        if self.sort_by is not None:
            yield 0, batch
            return
        keys = order_keys(batch.column(rows.ID).to_pylist(), self.seed)
        batch = batch.append_column(ORDER, pa.array(keys, pa.uint64()))
        if self.partitions == 1:
            yield 0, batch
            return
        parts = partition_of(keys, self.partitions)
        for p in np.unique(parts):
            yield int(p), batch.filter(pa.array(parts == p))


class _WritePartition(beam.DoFn):
    def __init__(self, out_dir: str, kind: str, work_dir: str, max_rows: int, max_bytes: int,
                 compression: str, chunk_rows: int, sort_by: str | None, count_prefix: str | None,
                 ipc_format: str = "stream"):
        self.out_dir = out_dir
        self.kind = kind
        self.work_dir = work_dir
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.compression = compression
        self.chunk_rows = chunk_rows
        self.sort_by = sort_by
        self.count_prefix = count_prefix
        self.ipc_format = ipc_format

    def process(self, element, schema):
        part, batches = element
        tables = [conform(pa.Table.from_batches([b]), schema) for b in batches]
        table = pa.concat_tables(tables)
        if self.sort_by is not None:
            keys = [(self.sort_by, "ascending"), (rows.ROW_KEY, "ascending")]
        else:
            keys = [(ORDER, "ascending"), (rows.ROW_KEY, "ascending")]
        table = table.take(pc.sort_indices(table, sort_keys=keys))
        table = rows.drop_internal(table)
        if self.count_prefix:
            count_by_source(self.count_prefix, table)
        n = table.num_rows
        avg = max(1.0, table.nbytes / max(n, 1))
        per_shard = max(1, min(self.max_rows, int(self.max_bytes // avg)))
        infos: list[dict[str, Any]] = []
        offsets = range(0, n, per_shard)
        names = [f"part-{part:05d}-{j:05d}.arrow" for j in range(len(offsets))]
        for name, off in zip(names, offsets, strict=True):
            piece = table.slice(off, per_shard)
            path = os.path.join(self.out_dir, self.kind, name)
            digest = write_ipc(path, piece, self.compression, self.chunk_rows, self.ipc_format)
            infos.append({"path": f"{self.kind}/{name}", "rows": piece.num_rows,
                          "bytes": os.path.getsize(path), "sha256": digest, "partition": part})
        # The driver reads these to build the manifest (results cannot come back otherwise).
        write_bytes_atomic(os.path.join(self.work_dir, self.kind, f"part-{part:05d}.json"),
                           json.dumps(infos).encode())
        yield from infos


class WriteShards(beam.PTransform):
    """Batches -> shards under OUT/<kind>/ (see the module docstring)."""

    def __init__(self, out_dir: str, work_dir: str, *, kind: str = "shards", seed: int = 0,
                 partitions: int = 1, max_rows: int = 100_000, max_bytes: int = 256 << 20,
                 compression: str = "none", chunk_rows: int = 4096, sort_by: str | None = None,
                 count_prefix: str | None = "written", label: str | None = None,
                 ipc_format: str = "stream"):
        super().__init__(label=label or f"Write[{kind}]")
        self.args = dict(out_dir=out_dir, kind=kind, work_dir=work_dir, max_rows=max_rows,
                         max_bytes=max_bytes, compression=compression, chunk_rows=chunk_rows,
                         sort_by=sort_by, count_prefix=count_prefix, ipc_format=ipc_format)
        self.seed = seed
        self.partitions = 1 if sort_by is not None else partitions
        self.sort_by = sort_by

    def expand(self, batches):
        schema = batches | "Schema" >> beam.CombineGlobally(UnifySchemas())
        return (
            batches
            | "KeyByPartition" >> beam.ParDo(_KeyByPartition(self.seed, self.partitions, self.sort_by))
            | "Group" >> beam.GroupByKey()
            | "WritePartition" >> beam.ParDo(_WritePartition(**self.args), beam.pvalue.AsSingleton(schema))
        )


class WriteQuarantine(beam.PTransform):
    """Quarantine batches -> OUT/quarantine/part-00000-00000.arrow, sorted by file and row."""

    def __init__(self, out_dir: str, work_dir: str):
        super().__init__(label="Write[quarantine]")
        self.out_dir = out_dir
        self.work_dir = work_dir

    def expand(self, batches):
        return (
            batches
            | beam.Map(lambda b: (0, b))
            | beam.GroupByKey()
            | beam.ParDo(_WriteQuarantine(self.out_dir, self.work_dir))
        )


class _WriteQuarantine(beam.DoFn):
    def __init__(self, out_dir: str, work_dir: str):
        self.out_dir = out_dir
        self.work_dir = work_dir

    def process(self, element):
        _, batches = element
        table = pa.Table.from_batches(list(batches), schema=rows.QUARANTINE_SCHEMA)
        table = table.take(pc.sort_indices(table, sort_keys=[(rows.SOURCE_FILE, "ascending"),
                                                             (rows.SOURCE_ROW, "ascending")]))
        name = "quarantine/part-00000-00000.arrow"
        digest = write_ipc(os.path.join(self.out_dir, name), table, "none", 4096)
        info = {"path": name, "rows": table.num_rows,
                "bytes": os.path.getsize(os.path.join(self.out_dir, name)), "sha256": digest}
        write_bytes_atomic(os.path.join(self.work_dir, "quarantine", "part-00000.json"), json.dumps([info]).encode())
        yield info
