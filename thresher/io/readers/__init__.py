"""One reader per input format, behind the protocol in `base.py`; `READERS` maps a recipe's
`format` to its reader."""

from __future__ import annotations

from thresher.io.readers.arrow import ArrowReader
from thresher.io.readers.base import Reader
from thresher.io.readers.csv import CsvReader
from thresher.io.readers.hf import HfDiskReader, HfHubReader
from thresher.io.readers.jsonl import JsonlReader
from thresher.io.readers.parquet import ParquetReader

READERS: dict[str, Reader] = {
    "jsonl": JsonlReader(),
    "parquet": ParquetReader(),
    "arrow": ArrowReader(),
    "csv": CsvReader(),
    "hf_disk": HfDiskReader(),
    "hf_hub": HfHubReader(),
}


def reader_for(fmt: str) -> Reader:
    """The reader of `fmt` (a format the recipe schema accepts)."""
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"no reader for format {fmt!r}; known: {', '.join(READERS)}") from None
