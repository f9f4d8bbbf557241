"""What the readers and the planner share: a read task, the batches it gives, what reading it
measured, and the errors.

Its own module so that `records`, the readers and `ingest` (which imports the readers) can all
use these without importing one another in a circle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow as pa

from thresher.core.errors import RecipeError
from thresher.recipe.schema import Source

# (canonical batch or None, quarantine batch or None): what reading a task yields, in order.
Batches: TypeAlias = Iterator[tuple[pa.RecordBatch | None, pa.RecordBatch | None]]


class InputError(RecipeError):
    """An input that cannot be read at all (raised before the pipeline starts)."""


class SourceReadError(OSError):
    """A file that cannot be read to its end (truncated or corrupt stream, changed during the
    run, hub dataset out of reach). The message names the file and how far reading got; the
    rows before the break have been yielded, and the source fails (never a short read that
    balances)."""


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a file (or one Parquet row group) of one source."""

    source: Source
    path: str
    format: str
    file_index: int  # global over the run: orders rows and makes `__row_key` unique
    part: int | None = None  # Parquet row group
    # What planning measured (size in bytes, sha256 or ""); a streamed read checks the bytes
    # it read against it, so a file changed after planning cannot pass unnoticed.
    expect: tuple[int, str] | None = None


@dataclass
class ReadTally:
    """What one read task read, counted apart from parsing: `records` is what the file holds
    (JSONL: its non-blank lines), `nbytes`/`sha` the raw bytes read (streamed formats)."""

    records: int = 0
    counts: bool = False  # True when the reader counts `records` (else: rows out + quarantined)
    nbytes: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    hashed: bool = False  # True once a streamed reader hashed the whole file
