"""Shard writer: canonical batches -> deterministic, bounded shards (Arrow IPC or Parquet).

In:  a PCollection of record batches (any mix of schemas; they are unified).
Out: `OUT/<kind>/part-PPPPP-SSSSS.arrow` (or `.parquet`) files — Arrow IPC *stream* format by
     default, which `datasets.Dataset.from_file`, `load_dataset` and `thresher.load` read —
     and a PCollection of one dict per shard (path, rows, bytes, sha256) that is also
     written to the run's work directory for the manifest. What a shard holds and how the
     file is written (columns, relative `source_file`, packing, format) is `shard_files`.
Cost: one shuffle (GroupByKey) of the data; each partition is sorted in one worker, so a
     worker holds about input_bytes / partitions in memory. `output.num_shards` adds a second
     shuffle (by shard index) and a side input of one row count per partition.

Determinism: the row order is a seeded hash of each row's id (or the `sort_by` column), ties
broken by `__row_key` (the input order), and rows are partitioned by the top bits of that
hash, so shard names, contents and bytes depend only on the recipe, inputs and seed — never
on bundle order or the runner's parallelism. Every file is written to a temp name, fsynced
and renamed.

Sizes: by default each partition cuts its rows into shards of at most `shard_max_rows` /
`shard_max_bytes` (`part-<partition>-<j>`). With `num_shards: N` the run writes exactly N
shards `part-00000-<j>` holding global rows [floor(j*T/N), floor((j+1)*T/N)) of the T rows
(or packed sequences), so sizes differ by at most one: every partition counts its rows, the
counts come back as a side input, each partition cuts its own rows at the global boundaries
and a shuffle by shard index joins the pieces in partition order.
"""

from __future__ import annotations

import json
import math
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.core import rows
from thresher.core.counters import count_by_source, sum_by_source
from thresher.io import fs
from thresher.io.atomic import write_bytes_atomic
from thresher.io.shard_files import ShardSpec, file_size, relative_source_file, write_ipc, write_shard

__all__ = ["ShardSpec", "WriteQuarantine", "WriteShards", "auto_partitions", "order_keys", "write_ipc"]

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


def ordered_partition(batches, schema: pa.Schema, sort_by: str | None) -> pa.Table:
    """One partition's batches -> its rows in the run's order, public columns only."""
    table = pa.concat_tables([conform(pa.Table.from_batches([b]), schema) for b in batches])
    first = sort_by if sort_by is not None else ORDER
    table = table.take(pc.sort_indices(table, sort_keys=[(first, "ascending"), (rows.ROW_KEY, "ascending")]))
    return rows.drop_internal(table)


def _record(work_dir: str, kind: str, key: str, infos: list[dict[str, Any]]) -> None:
    # The driver reads these to build the manifest (results cannot come back otherwise).
    write_bytes_atomic(fs.join(work_dir, kind, f"part-{key}.json"), json.dumps(infos).encode())


def _write(out_dir: str, kind: str, name: str, table: pa.Table, spec: ShardSpec, **extra: Any) -> dict[str, Any]:
    path = fs.join(out_dir, kind, name)
    digest = write_shard(path, table, spec)
    return {"path": f"{kind}/{name}", "rows": table.num_rows, "bytes": file_size(path), "sha256": digest, **extra}


def finished_partition(batches, schema: pa.Schema, sort_by: str | None, count_prefix: str | None,
                       spec: ShardSpec) -> pa.Table:
    """One partition's rows in their final order, counted as written (before packing and column
    selection, so counts stay per input row), then shaped as the shards hold them."""
    table = ordered_partition(batches, schema, sort_by)
    if count_prefix:
        count_by_source(count_prefix, table)
        sum_by_source(table)
    return spec.finish(table)


class _WritePartition(beam.DoFn):
    """Sizes from `shard_max_rows`/`shard_max_bytes`: each partition writes its own run of
    shards, `part-<partition>-<j>`."""

    def __init__(self, out_dir: str, kind: str, work_dir: str, max_rows: int, max_bytes: int,
                 sort_by: str | None, count_prefix: str | None, spec: ShardSpec):
        self.out_dir = out_dir
        self.kind = kind
        self.work_dir = work_dir
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.sort_by = sort_by
        self.count_prefix = count_prefix
        self.spec = spec

    def process(self, element, schema):
        part, batches = element
        table = finished_partition(batches, schema, self.sort_by, self.count_prefix, self.spec)
        n = table.num_rows
        avg = max(1.0, table.nbytes / max(n, 1))
        per_shard = max(1, min(self.max_rows, int(self.max_bytes // avg)))
        infos = [_write(self.out_dir, self.kind, f"part-{part:05d}-{j:05d}{self.spec.suffix}",
                        table.slice(off, per_shard), self.spec, partition=part)
                 for j, off in enumerate(range(0, n, per_shard))]
        _record(self.work_dir, self.kind, f"{part:05d}", infos)
        yield from infos


# -- `output.num_shards`: exactly N shards, sizes within one row (or packed sequence) -------


class _FinishPartition(beam.DoFn):
    def __init__(self, sort_by: str | None, count_prefix: str | None, spec: ShardSpec):
        self.sort_by = sort_by
        self.count_prefix = count_prefix
        self.spec = spec

    def process(self, element, schema):
        part, batches = element
        yield part, finished_partition(batches, schema, self.sort_by, self.count_prefix, self.spec)


def shard_bounds(total: int, num_shards: int) -> np.ndarray:
    """Global start row of each shard (and the end): floor(i * total / num_shards)."""
    return (np.arange(num_shards + 1, dtype=np.int64) * total) // num_shards


def cut_pieces(element, counts: dict[int, int], num_shards: int):
    """A partition's rows -> (shard, (partition, piece)) at the global shard boundaries."""
    part, table = element
    start = sum(n for p, n in counts.items() if p < part)
    bounds = shard_bounds(sum(counts.values()), num_shards)
    end = start + table.num_rows
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    for j in range(max(first, 0), num_shards):
        lo, hi = max(start, int(bounds[j])), min(end, int(bounds[j + 1]))
        if lo >= end:
            break
        if hi > lo:
            yield j, (part, table.slice(lo - start, hi - lo))


class _WriteBalanced(beam.DoFn):
    def __init__(self, out_dir: str, kind: str, work_dir: str, spec: ShardSpec):
        self.out_dir = out_dir
        self.kind = kind
        self.work_dir = work_dir
        self.spec = spec

    def process(self, element, empty: pa.Schema | None):
        j, pieces = element
        # Pieces concatenate in partition order: the global row order, for any runner.
        tables = [t for _, t in sorted((p for p in pieces if p is not None), key=lambda x: x[0])]
        if not tables and empty is None:
            return []  # no row and no schema anywhere in the run: nothing to write
        table = fresh_copy(pa.concat_tables(tables)) if tables else empty.empty_table()
        info = _write(self.out_dir, self.kind, f"part-00000-{j:05d}{self.spec.suffix}", table, self.spec,
                      partition=0)
        _record(self.work_dir, self.kind, f"00000-{j:05d}", [info])
        return [info]


def fresh_copy(table: pa.Table) -> pa.Table:
    """`table` in new contiguous buffers. The IPC writer writes a sliced array's buffers as
    they lie (more bytes for a slice than for the same values copied), so without this a shard
    made of one partition's slice and the same rows joined from two partitions would differ
    in bytes though equal in rows."""
    return pa.Table.from_arrays([pa.concat_arrays([pa.array([], c.type), *c.chunks]) for c in table.columns],
                                schema=table.schema)


def _finished_schema(schema: pa.Schema | None, spec: ShardSpec) -> pa.Schema | None:
    """The schema of a shard with no rows (more shards than rows)."""
    if schema is None:
        return None
    return spec.finish(schema.empty_table()).schema


class WriteShards(beam.PTransform):
    """Batches -> shards under OUT/<kind>/ (see the module docstring)."""

    def __init__(self, out_dir: str, work_dir: str, *, kind: str = "shards", seed: int = 0,
                 partitions: int = 1, max_rows: int = 100_000, max_bytes: int = 256 << 20,
                 compression: str = "none", chunk_rows: int = 4096, sort_by: str | None = None,
                 count_prefix: str | None = "written", label: str | None = None,
                 ipc_format: str = "stream", spec: ShardSpec | None = None):
        super().__init__(label=label or f"Write[{kind}]")
        self.spec = spec or ShardSpec(ipc_format=ipc_format, compression=compression, chunk_rows=chunk_rows)
        self.args = dict(out_dir=out_dir, kind=kind, work_dir=work_dir)
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.count_prefix = count_prefix
        self.seed = seed
        self.partitions = 1 if sort_by is not None else partitions
        self.sort_by = sort_by

    def expand(self, batches):
        schema = batches | "Schema" >> beam.CombineGlobally(UnifySchemas())
        grouped = (batches
                   | "KeyByPartition" >> beam.ParDo(_KeyByPartition(self.seed, self.partitions, self.sort_by))
                   | "Group" >> beam.GroupByKey())
        if self.spec.num_shards is None:
            return grouped | "WritePartition" >> beam.ParDo(
                _WritePartition(**self.args, max_rows=self.max_rows, max_bytes=self.max_bytes, sort_by=self.sort_by,
                                count_prefix=self.count_prefix, spec=self.spec),
                beam.pvalue.AsSingleton(schema))
        # Balanced: each partition learns its global row range from every partition's count
        # (a small side input) and cuts its rows at floor(i*T/N); a second shuffle by shard
        # index joins the pieces. No worker ever holds more than a partition or a shard.
        n = self.spec.num_shards
        finished = grouped | "Finish" >> beam.ParDo(_FinishPartition(self.sort_by, self.count_prefix, self.spec),
                                                    beam.pvalue.AsSingleton(schema))
        counts = (finished | "Count" >> beam.Map(lambda e: (e[0], e[1].num_rows))
                  | "Counts" >> beam.combiners.ToDict())
        pieces = finished | "Cut" >> beam.FlatMap(cut_pieces, beam.pvalue.AsSingleton(counts), n)
        # Every shard index appears even when there are fewer rows than shards.
        every = batches.pipeline | "ShardIndexes" >> beam.Create([(j, None) for j in range(n)])
        empty = schema | "EmptySchema" >> beam.Map(_finished_schema, self.spec)
        return ((pieces, every) | "Pieces" >> beam.Flatten() | "GroupShards" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteBalanced(**self.args, spec=self.spec),
                                             beam.pvalue.AsSingleton(empty)))


class WriteQuarantine(beam.PTransform):
    """Quarantine batches -> OUT/quarantine/part-00000-00000.arrow, sorted by file and row."""

    def __init__(self, out_dir: str, work_dir: str, base_dir: str | None = None):
        super().__init__(label="Write[quarantine]")
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.base_dir = base_dir

    def expand(self, batches):
        return (
            batches
            | beam.Map(lambda b: (0, b))
            | beam.GroupByKey()
            | beam.ParDo(_WriteQuarantine(self.out_dir, self.work_dir, self.base_dir))
        )


class _WriteQuarantine(beam.DoFn):
    def __init__(self, out_dir: str, work_dir: str, base_dir: str | None = None):
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.base_dir = base_dir

    def process(self, element):
        _, batches = element
        table = pa.Table.from_batches(list(batches), schema=rows.QUARANTINE_SCHEMA)
        table = relative_source_file(table, self.base_dir)
        table = table.take(pc.sort_indices(table, sort_keys=[(rows.SOURCE_FILE, "ascending"),
                                                             (rows.SOURCE_ROW, "ascending")]))
        info = _write(self.out_dir, "quarantine", "part-00000-00000.arrow", table, ShardSpec())
        _record(self.work_dir, "quarantine", "00000", [info])
        yield info
