"""What the readers and the planner share: a read task, the batches it gives, the input error.

Its own module so that `records`, the readers and `ingest` (which imports the readers) can all
use these without importing one another in a circle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import pyarrow as pa

from thresher.core.errors import RecipeError
from thresher.recipe.schema import Source

# (canonical batch or None, quarantine batch or None): what reading a task yields, in order.
Batches: TypeAlias = Iterator[tuple[pa.RecordBatch | None, pa.RecordBatch | None]]


class InputError(RecipeError):
    """An input that cannot be read at all (raised before the pipeline starts)."""


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a file (or one Parquet row group) of one source."""

    source: Source
    path: str
    format: str
    file_index: int  # global over the run: orders rows and makes `__row_key` unique
    part: int | None = None  # Parquet row group
