"""Arrow IPC, file or stream format (`.arrow`, `.feather`, `.ipc`), memory-mapped.

Rows are numbered from 0.
"""

from __future__ import annotations

import pyarrow as pa

from thresher.io.readers.base import ColumnarReader
from thresher.io.records import table_to_batches
from thresher.io.tasks import Batches, ReadTask
from thresher.recipe.schema import Source


def _open_ipc(path: str) -> pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader:
    """An IPC reader for either format: the extension does not say which one a file uses."""
    try:
        return pa.ipc.open_file(pa.memory_map(path))
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(path))


class ArrowReader(ColumnarReader):
    def schema(self, source: Source, path: str) -> pa.Schema:
        return _open_ipc(path).schema

    def read(self, task: ReadTask, batch_rows: int) -> Batches:
        yield from table_to_batches(task, _open_ipc(task.path).read_all(), 0, batch_rows)
