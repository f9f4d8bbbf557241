"""The canonical row: columns every row carries from ingest to the shards.

Rows travel through the pipeline as `pyarrow.RecordBatch`es with these columns first, then
whatever the source carried (`messages`, `answer`, ...), then columns that stages add
(`ngram_buckets`, `embedding`, score columns). Columns whose names start with `__` are the
pipeline's own bookkeeping and never reach the shards.
"""

from __future__ import annotations

import pyarrow as pa

ID = "id"
TEXT = "text"
SOURCE = "source"
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"

CANONICAL_FIELDS: list[pa.Field] = [
    pa.field(ID, pa.string(), nullable=False),
    pa.field(TEXT, pa.string(), nullable=False),
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(SOURCE_FILE, pa.string(), nullable=False),
    # 1-based line number for JSONL/CSV, 0-based row index for columnar formats.
    pa.field(SOURCE_ROW, pa.int64(), nullable=False),
]
CANONICAL_NAMES = [f.name for f in CANONICAL_FIELDS]

INTERNAL_PREFIX = "__"
# uint64: (global file index << 40) | source_row — the input order, unique per row. Used for
# "first occurrence wins" decisions and as the final tie-break, so results never depend on
# the order in which a runner happened to process bundles.
ROW_KEY = "__row_key"

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(SOURCE, pa.string()),
        pa.field(SOURCE_FILE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("field", pa.string()),
        # The record exactly as read (bytes), so nothing is lost.
        pa.field("raw", pa.binary()),
    ]
)

ROW_KEY_FILE_SHIFT = 40


def is_internal(name: str) -> bool:
    return name.startswith(INTERNAL_PREFIX)


def public_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if not is_internal(n)]


def drop_internal(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    keep = public_columns(batch.schema)
    if len(keep) == len(batch.schema.names):
        return batch
    return batch.select(keep)


def column_order(names: list[str]) -> list[str]:
    """Canonical columns first (fixed order), the rest sorted by name: a stable schema."""
    rest = sorted(n for n in names if n not in CANONICAL_NAMES)
    return [n for n in CANONICAL_NAMES if n in names] + rest
