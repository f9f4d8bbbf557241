"""What one shard holds and how it is written: the output's last shaping and the file formats.

`ShardSpec` carries the recipe's `output:` keys that shape a shard (built once on the driver,
shipped to the workers): `finish(table)` turns a partition's ordered rows into what is written
(`source_file` relative to the recipe's folder, packed sequences, the chosen columns), and
`write_shard(path, table)` writes one file (Arrow IPC or Parquet), atomically, with pinned
writer options so the bytes depend only on the rows.

Every file write goes through `write_shard` (and its two helpers), so a new storage backend
changes one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.core import rows
from thresher.io.atomic import write_atomic
from thresher.io.packing import PACKED_COLUMNS, pack_table

__all__ = ["PACKED_COLUMNS", "ShardSpec", "select_columns", "write_ipc", "write_parquet", "write_shard"]



@dataclass(frozen=True)
class ShardSpec:
    """How a run's shards are shaped and written (see `recipe.schema.Output`)."""

    format: str = "arrow"  # arrow | parquet
    ipc_format: str = "stream"
    compression: str = "none"
    chunk_rows: int = 4096  # Arrow record batch rows
    parquet_row_group_rows: int = 8192
    num_shards: int | None = None
    columns: tuple[str, ...] | None = None
    drop_columns: tuple[str, ...] = ()
    base_dir: str | None = None  # `source_file` is written relative to it; None: as read
    pack: dict[str, Any] | None = None  # {seq_len, method, pad_id}

    @property
    def suffix(self) -> str:
        return ".parquet" if self.format == "parquet" else ".arrow"

    @classmethod
    def of_output(cls, output, base_dir: str, chunk_rows: int, pad_id: int | None = None) -> ShardSpec:
        """The spec for a recipe's `output:` section (`pad_id`: the tokenizer's, with `pack`)."""
        pack = None
        if output.pack is not None:
            pack = {"seq_len": output.pack.seq_len, "method": output.pack.method, "pad_id": int(pad_id or 0)}
        return cls(format=output.format, ipc_format=output.ipc_format, compression=output.compression,
                   chunk_rows=chunk_rows, parquet_row_group_rows=output.parquet_row_group_rows,
                   num_shards=output.num_shards,
                   columns=tuple(output.columns) if output.columns is not None else None,
                   drop_columns=tuple(output.drop_columns),
                   base_dir=None if output.absolute_paths or "://" in base_dir else os.path.abspath(base_dir),
                   pack=pack)

    def finish(self, table: pa.Table) -> pa.Table:
        """A partition's ordered public rows -> what its shards hold."""
        table = relative_source_file(table, self.base_dir)
        if self.pack is not None:
            table = pack_table(table, self.pack["seq_len"], self.pack["method"], self.pack["pad_id"])
        return select_columns(table, self.columns, self.drop_columns)


def relative_source_file(table: pa.Table, base_dir: str | None) -> pa.Table:
    """`source_file` relative to `base_dir` (POSIX separators), so the same inputs in two
    folders give the same bytes. URLs and placeholders (`<memory>`) stay as they are.

    Done on the distinct paths (a shard holds rows of a few files), not per row."""
    if base_dir is None or rows.SOURCE_FILE not in table.column_names:
        return table
    col = table.column(rows.SOURCE_FILE)
    distinct = pc.unique(col).to_pylist()
    mapped = [_relative(p, base_dir) for p in distinct]
    if mapped == distinct:
        return table
    idx = pc.index_in(col, value_set=pa.array(distinct, pa.string()))
    new = pc.take(pa.array(mapped, pa.string()), idx)
    i = table.schema.get_field_index(rows.SOURCE_FILE)
    return table.set_column(i, table.schema.field(i), new)


def _relative(path: str | None, base_dir: str) -> str | None:
    if path is None or not os.path.isabs(path) or "://" in path:
        return path
    return os.path.relpath(path, base_dir).replace(os.sep, "/")


def select_columns(table: pa.Table, columns: tuple[str, ...] | None, drop: tuple[str, ...]) -> pa.Table:
    """`output.columns` (in that order) then without `output.drop_columns`. Names the table
    lacks are an error: `engine.plan` rejects what it can see before the run, this catches
    columns only a stage's output could have had."""
    missing = [c for c in (*(columns or ()), *drop) if c not in table.column_names]
    if missing:
        from thresher.core.errors import UserError

        raise UserError(f"output.columns/drop_columns: no column {', '.join(map(repr, missing))} in the shards "
                        f"(they have {', '.join(table.column_names)}); fix the names in the recipe's output:")
    if columns is not None:
        table = table.select(list(columns))
    return table.drop_columns(list(drop)) if drop else table


# ---------------------------------------------------------------------------------------
# Files


def write_shard(path: str, table: pa.Table, spec: ShardSpec) -> str:
    """Write one shard in the spec's format, atomically. Returns its sha256."""
    if spec.format == "parquet":
        return write_parquet(path, table, spec.parquet_row_group_rows)
    return write_ipc(path, table, spec.compression, spec.chunk_rows, spec.ipc_format)


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


# Pinned so the bytes depend only on the rows: pyarrow's defaults (format version, page size,
# compression, statistics) may change between releases. Parquet files hold no timestamp; the
# footer's `created_by` names the pyarrow version (fixed for an install, not settable).
# Snappy: what every Parquet reader decodes, and cheap to decode while streaming.
_PARQUET_OPTIONS = dict(version="2.6", compression="snappy", use_dictionary=True,
                        write_statistics=True, data_page_size=1 << 20, data_page_version="1.0",
                        use_compliant_nested_type=True, store_schema=True)


def write_parquet(path: str, table: pa.Table, row_group_rows: int) -> str:
    """Write `table` as Parquet with `row_group_rows` rows per row group, atomically."""
    table = table.replace_schema_metadata(None).combine_chunks()

    def write(fh):
        pq.write_table(table, pa.PythonFile(fh, mode="w"), row_group_size=row_group_rows, **_PARQUET_OPTIONS)

    return write_atomic(path, write)


def file_size(path: str) -> int:
    from thresher.io import fs

    return fs.size(path)
