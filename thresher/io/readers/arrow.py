"""Arrow IPC, file or stream format (`.arrow`, `.feather`, `.ipc`), memory-mapped (a URL:
read into memory through `io.fs`).

Rows are numbered from 0. A stream-format file that does not end with the end-of-stream
marker is a truncated read (a failed source), after its rows.
"""

from __future__ import annotations

import pyarrow as pa

from thresher.io import fs
from thresher.io.readers.base import ColumnarReader
from thresher.io.records import table_to_batches
from thresher.io.tasks import Batches, ReadTally, ReadTask, SourceReadError
from thresher.recipe.schema import Source

_EOS = b"\xff\xff\xff\xff\0\0\0\0"  # continuation marker + zero length


def _open_ipc(path: str) -> pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader:
    """An IPC reader for either format: the extension does not say which one a file uses."""
    def source():
        return pa.BufferReader(fs.read_bytes(path)) if fs.is_remote(path) else pa.memory_map(path)

    try:
        return pa.ipc.open_file(source())
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(source())


class ArrowReader(ColumnarReader):
    def schema(self, source: Source, path: str) -> pa.Schema:
        return _open_ipc(path).schema

    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        reader = _open_ipc(task.path)
        table = reader.read_all()
        yield from table_to_batches(task, table, 0, batch_rows)
        if isinstance(reader, pa.ipc.RecordBatchStreamReader) and not ends_with_eos(task.path):
            # pyarrow stops without a word at the end of the bytes; a stream cut between two
            # messages is only told from a whole one by its missing end-of-stream marker.
            raise SourceReadError(f"{task.path}: truncated Arrow IPC stream: no end-of-stream marker after "
                                  f"{table.num_rows} rows")


def ends_with_eos(path: str) -> bool:
    """Whether the file ends with the IPC end-of-stream marker (as pyarrow writes it)."""
    with fs.open(path, "rb") as fh:
        fh.seek(max(0, fs.size(path) - 8))
        tail = fh.read()
    return tail == _EOS
