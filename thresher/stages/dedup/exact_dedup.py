"""`exact_dedup`: drop rows whose normalised text was already seen; the first occurrence wins.

In:  canonical batches. Out: the same, minus duplicates; dropped rows have reason
     `duplicate` and (in `dropped/`) a `duplicate_of` column naming the kept row's id.
Cost: two light passes. Pass 1 hashes each text (xxh3-64) and shuffles (hash, row key) pairs
     into `buckets` groups; each group finds its duplicates with a NumPy sort. Only the
     duplicates' row keys come back as a side input (memory ~ number of duplicates, not the
     corpus). Pass 2 drops them batch by batch. "First" means lowest `__row_key`, i.e. the
     recipe's source order, file order and line order — the same on any runner.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field

from thresher.core import Selector, StageParams, rows
from thresher.core.columns import find_sorted, strings

DUPLICATE_OF = "duplicate_of"


class ExactDedupParams(StageParams):
    ignore_case_and_space: bool = Field(
        False, description="Hash lowercased text with whitespace folded, so 'A  b' == 'a b'."
    )
    buckets: int = Field(64, gt=0, le=4096, description="Shuffle groups for pass 1.")


def text_hashes(texts: pa.Array, ignore_case_and_space: bool) -> np.ndarray:
    if ignore_case_and_space:
        texts = pc.utf8_lower(pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"\s+", " ")))
    return np.fromiter((xxhash.xxh3_64_intdigest(t.encode("utf-8", "surrogatepass")) for t in texts.to_pylist()),
                       dtype=np.uint64, count=len(texts))


def _hash_to_buckets(batch: pa.RecordBatch, params: ExactDedupParams):
    h = text_hashes(batch.column(rows.TEXT), params.ignore_case_and_space)
    keys = batch.column(rows.ROW_KEY).to_numpy()
    ids = strings(batch, rows.ID)
    bucket = h % np.uint64(params.buckets)
    for b in np.unique(bucket):
        m = bucket == b
        yield int(b), (h[m], keys[m], ids[m])


def _find_duplicates(element):
    """One bucket -> (loser row keys, winner ids) for every hash seen more than once."""
    _, parts = element
    parts = list(parts)
    h = np.concatenate([p[0] for p in parts])
    k = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([p[2] for p in parts])
    order = np.lexsort((k, h))  # by hash, then row key: the first row of a run wins
    h, k, ids = h[order], k[order], ids[order]
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    if first.all():
        return
    winner_idx = np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))
    losers = ~first
    yield k[losers], ids[winner_idx[losers]]


def _merge_losers(acc: list) -> tuple[np.ndarray, np.ndarray]:
    """Every bucket's (loser keys, winner ids), gathered by ToList -> one sorted lookup."""
    if not acc:
        return np.zeros(0, np.uint64), np.zeros(0, object)
    keys = np.concatenate([a[0] for a in acc])
    winners = np.concatenate([a[1] for a in acc])
    order = np.argsort(keys, kind="stable")
    return keys[order], winners[order]


class ExactDedup(Selector):
    __doc__ = __doc__
    type_name = "exact_dedup"
    Params = ExactDedupParams
    cost = "CPU: one xxh3 hash per row, one shuffle of 16 bytes per row; memory ~ duplicates"
    # `duplicate_of` only means something on dropped rows (it travels to dropped/).
    dropped_only_columns = (DUPLICATE_OF,)

    def select(self, batches):
        return (
            batches
            | "Hash" >> beam.FlatMap(_hash_to_buckets, self.params)
            | "Group" >> beam.GroupByKey()
            | "FindDuplicates" >> beam.FlatMap(_find_duplicates)
            | "Gather" >> beam.combiners.ToList()
            | "Merge" >> beam.Map(_merge_losers)
        )

    def decide(self, batch, losers):
        loser_keys, winners = losers
        dup, pos = find_sorted(batch.column(rows.ROW_KEY).to_numpy(), loser_keys)
        dup_of = pa.array([winners[p] if d else None for p, d in zip(pos, dup, strict=True)], pa.string())
        return ~dup, "duplicate", {DUPLICATE_OF: dup_of}
