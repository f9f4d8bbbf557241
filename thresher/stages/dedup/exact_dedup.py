"""`exact_dedup`: drop rows whose normalised text was already seen; the first occurrence wins.

In:  canonical batches. Out: the same, minus duplicates; dropped rows have reason
     `duplicate` and (in `dropped/`) a `duplicate_of` column naming the kept row's id.
Cost: a hash join, two shuffles. (1) Each text is hashed (xxh3-64) and (hash, row key, id,
     batch key) shuffled into `buckets` groups by hash, so all rows of one text meet in one
     group, which finds its duplicates with a NumPy sort (memory per group ~ rows/`buckets`
     x ~40 bytes). (2) Each duplicate's (row key, kept id) goes back to the batch holding it by
     a CoGroupByKey on the batch key, which drops it there: no worker holds the whole set of
     duplicates, and batches with none get no decisions (on `runner: dask` the batches stay on
     their workers: only the decisions travel). "First" means lowest `__row_key`,
     i.e. the recipe's source order, file order and line order — the same on any runner.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.core import Selector, StageParams, keyed, rows
from thresher.core.columns import find_sorted, runs_of
from thresher.text.hashing import utf8_xxh3

DUPLICATE_OF = "duplicate_of"


class ExactDedupParams(StageParams):
    ignore_case_and_space: bool = Field(
        False, description="Hash lowercased text with whitespace folded, so 'A  b' == 'a b'."
    )
    buckets: int = Field(64, gt=0, le=4096, description="Shuffle groups for pass 1.")


def text_hashes(texts: pa.Array, ignore_case_and_space: bool) -> np.ndarray:
    if ignore_case_and_space:
        texts = pc.utf8_lower(pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"\s+", " ")))
    return utf8_xxh3(texts)


def hash_to_buckets(batch: pa.RecordBatch, params: ExactDedupParams):
    """A batch -> per hash bucket: (hash, row key, id, batch key) of its rows. Ids stay Arrow
    arrays: the shuffle moves their buffers, and only the winners' ever become Python strings."""
    h = text_hashes(batch.column(rows.TEXT), params.ignore_case_and_space)
    keys = batch.column(rows.ROW_KEY).to_numpy()
    ids = batch.column(rows.ID)
    home = keyed.batch_keys(batch)
    bucket = h % np.uint64(params.buckets)
    for b, idx in runs_of(bucket):
        yield int(b), (h[idx], keys[idx], ids.take(pa.array(idx)), home[idx])


def _as_strings(ids) -> pa.Array:
    return ids.cast(pa.string()) if isinstance(ids, pa.Array) else pa.array(ids, pa.string())


def find_duplicates(element):
    """One bucket -> per batch holding duplicates: (batch key, {loser row keys, winner ids})."""
    _, parts = element
    parts = list(parts)
    h = np.concatenate([p[0] for p in parts])
    k = np.concatenate([p[1] for p in parts])
    home = np.concatenate([p[3] for p in parts])
    order = np.lexsort((k, h))  # by hash, then row key: the first row of a run wins
    h, k, home = h[order], k[order], home[order]
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    if first.all():
        return
    winner_idx = np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))
    losers = ~first
    ids = pa.concat_arrays([_as_strings(p[2]) for p in parts])
    winners = ids.take(pa.array(order[winner_idx[losers]])).to_numpy(zero_copy_only=False)
    yield from keyed.split_by_batch(home[losers], keys=k[losers], winners=winners)


class ExactDedup(Selector):
    __doc__ = __doc__
    type_name = "exact_dedup"
    Params = ExactDedupParams
    cost = "CPU: one xxh3 hash per row; shuffles of ~40 bytes per row and of the rows by batch"
    # `duplicate_of` only means something on dropped rows (it travels to dropped/).
    dropped_only_columns = (DUPLICATE_OF,)

    def select_keyed(self, batches):
        return (
            batches
            | "Hash" >> beam.FlatMap(hash_to_buckets, self.params)
            | "Group" >> beam.GroupByKey()
            | "FindDuplicates" >> beam.FlatMap(find_duplicates)
        )

    def decide(self, batch, parts):
        losers = keyed.merge_parts(parts, "keys", {"keys": np.uint64, "winners": object})
        dup, pos = find_sorted(batch.column(rows.ROW_KEY).to_numpy(), losers["keys"])
        dup_of = pa.array(np.where(dup, losers["winners"][pos] if dup.any() else None, None), pa.string())
        return ~dup, "duplicate", {DUPLICATE_OF: dup_of}
