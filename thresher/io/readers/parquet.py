"""Parquet: one read task per row group, so a runner spreads one big file over workers.

Rows are numbered from 0 over the whole file (a row group's first row follows the row counts
of the groups before it). A URL is read through its fsspec file (`io.fs`): the footer, then
only the row group's byte ranges.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.io import fs
from thresher.io.readers.base import ColumnarReader, check_fields
from thresher.io.records import table_to_batches
from thresher.io.tasks import Batches, ReadTally, ReadTask
from thresher.recipe.schema import Source


class ParquetReader(ColumnarReader):
    def schema(self, source: Source, path: str) -> pa.Schema:
        with fs.open(path, "rb") as fh:
            return pq.read_schema(fh)

    def check(self, source: Source, path: str) -> list[int | None]:
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            check_fields(source, path, pf.schema_arrow)
            return list(range(pf.num_row_groups)) or [None]

    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        with fs.open(task.path, "rb") as fh:
            yield from self._read(pq.ParquetFile(fh), task, batch_rows, tally)

    def _read(self, pf: pq.ParquetFile, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        # What the footer says the task holds, counted apart from the rows that come out.
        tally.counts = True
        tally.records += pf.metadata.num_rows if task.part is None else pf.metadata.row_group(task.part).num_rows
        if task.part is None:
            yield from table_to_batches(task, pf.read(), 0, batch_rows)
        else:
            first = sum(pf.metadata.row_group(i).num_rows for i in range(task.part))
            yield from table_to_batches(task, pf.read_row_group(task.part), first, batch_rows)
