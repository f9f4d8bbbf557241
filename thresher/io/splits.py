"""`output.splits`: each row goes to one named split by a seeded hash of its id.

The hash is xxh3-64 of the id's UTF-8 bytes under a seed derived from (but not equal to) the
recipe's seed — the shuffle order uses the recipe's seed itself, and reusing it would put each
split's rows in one contiguous range of the order (so in the last partitions). A row's split
depends only on its id and the seed: the same on any runner, with any batching, and across
refreshes (a row that stays in the inputs stays in its split, so an appended refresh never
moves validation rows into train).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from thresher.core import rows
from thresher.text.hashing import utf8_xxh3

_SALT = 0x5EED_5917_0F_5EED


def split_seed(seed: int) -> int:
    return (seed ^ _SALT) & 0xFFFF_FFFF_FFFF_FFFF


def split_index(ids: pa.Array, fractions: list[float], seed: int) -> np.ndarray:
    """The index (into `fractions`, in recipe order) of each id's split."""
    s = split_seed(seed)
    h = utf8_xxh3(ids, s)
    # Cumulative bounds on the 64-bit range, the last one the full range, so every row lands.
    bounds = (np.cumsum(fractions)[:-1] * 2.0**64).astype(np.float64)
    return np.searchsorted(bounds, h.astype(np.float64), side="right").astype(np.int32)


def rows_of_split(batch: pa.RecordBatch, index: int, fractions: list[float], seed: int):
    """`batch`'s rows of split `index` (nothing when it has none): a FlatMap over batches."""
    mask = split_index(batch.column(rows.ID), fractions, seed) == index
    if mask.all():
        yield batch
    elif mask.any():
        yield batch.filter(pa.array(mask))


def split_of_path(path: str) -> str | None:
    """The split a manifest shard path names (`shards/<split>/part-…`), None without splits."""
    parts = path.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "shards" else None
