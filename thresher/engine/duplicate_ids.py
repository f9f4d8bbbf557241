"""Ids that more than one row has, found right after ingest (before any stage reads them).

In:  canonical batches. Out: the same batches; under `on_duplicate_id: rename` the later
     occurrences of an id (in `__row_key` order: source, file, line — the same on any runner)
     get `#<n>` appended (`x`, `x#1`, `x#2`), so `duplicate_of` and row order mean one row.
Cost: one pass hashing each id (xxh3-64) and shuffling (hash, row key, id) into
     `BUCKETS` groups; every occurrence of an id lands in one group, which finds the repeats
     with a NumPy sort. Only the later occurrences come back as a side input (memory ~
     duplicates, not the corpus). Under `warn` and `error` the batches pass through untouched.
Counts: `duplicate_ids/<source>` (rows whose id an earlier row already had). The driver then
     logs one line (`warn`) or fails the run naming the first ids (`error`): `check`.
"""

from __future__ import annotations

import json
import logging
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa

from thresher.core import rows
from thresher.core.columns import find_sorted, runs_of, set_column, strings
from thresher.core.counters import counter
from thresher.io import fs
from thresher.io.atomic import write_bytes_atomic
from thresher.text.hashing import utf8_xxh3

COUNTER = "duplicate_ids"
BUCKETS = 64
SUMMARY = "duplicate_ids.json"  # in the work dir: the driver's view of the duplicates
_NAMED = 5  # ids named in the log line / error

log = logging.getLogger("thresher.duplicate_ids")


def _to_buckets(batch: pa.RecordBatch):
    column = batch.column(rows.ID)
    h = utf8_xxh3(column)
    keys = batch.column(rows.ROW_KEY).to_numpy()
    for b, idx in runs_of(h % np.uint64(BUCKETS)):
        # The ids stay an Arrow array: pickled as two buffers, where a NumPy object array is
        # pickled string by string (measured 0.64 s of CPU per 280k rows in bench/dsir.py).
        # `take`, not a slice: a slice would pickle its parent's whole buffer.
        yield int(b), (h[idx], keys[idx], column.take(pa.array(idx)))


def _find_repeats(element):
    """One bucket -> [(row key, occurrence number, id)] of every later occurrence of an id."""
    _, parts = element
    parts = list(parts)
    h = np.concatenate([p[0] for p in parts])
    _, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
    cand = np.flatnonzero(counts[inverse] > 1)  # same hash: compare the ids themselves
    if not len(cand):
        return
    k = np.concatenate([p[1] for p in parts])[cand]
    ids = pa.concat_arrays([p[2] for p in parts]).take(pa.array(cand)).to_pylist()
    seen: dict[str, int] = {}
    out = []
    for i in np.argsort(k, kind="stable"):
        n = seen.get(ids[i], 0)
        seen[ids[i]] = n + 1
        if n:
            out.append((int(k[i]), n, ids[i]))
    if out:
        yield out


def _merge(acc: list, work_dir: str, file_sources: dict[int, str]):
    """All buckets' later occurrences -> sorted lookup; counts per source; a summary file."""
    later = sorted((x for part in acc for x in part), key=lambda x: x[0])
    per_source: dict[str, int] = {}
    for key, _, _ in later:  # a row key's top bits are its input file's index
        src = file_sources[key >> rows.ROW_KEY_FILE_SHIFT]
        per_source[src] = per_source.get(src, 0) + 1
    for src, n in sorted(per_source.items()):
        counter(f"{COUNTER}/{src}").inc(n)
    named = list(dict.fromkeys(x[2] for x in later))[:_NAMED]
    write_bytes_atomic(os.path.join(work_dir, SUMMARY), json.dumps({"rows": len(later), "ids": named}).encode())
    return (np.array([x[0] for x in later], np.uint64), np.array([x[1] for x in later], np.int64))


def _rename(batch: pa.RecordBatch, later):
    keys, ns = later
    hit, pos = find_sorted(batch.column(rows.ROW_KEY).to_numpy(), keys)
    if not hit.any():
        return batch
    ids = strings(batch, rows.ID)
    for i in np.flatnonzero(hit):
        ids[i] = f"{ids[i]}#{ns[pos[i]]}"
    return set_column(batch, rows.ID, pa.array(ids, pa.string()))


class DuplicateIds(beam.PTransform):
    """Batches -> batches; see the module docstring."""

    def __init__(self, policy: str, work_dir: str, file_sources: dict[int, str]):
        super().__init__(label="DuplicateIds")
        self.policy = policy
        self.work_dir = work_dir
        self.file_sources = file_sources  # input file index -> source name (for the counts)

    def expand(self, batches):
        later = (
            batches
            | "Hash" >> beam.FlatMap(_to_buckets)
            | "Group" >> beam.GroupByKey()
            | "FindRepeats" >> beam.FlatMap(_find_repeats)
            | "Gather" >> beam.combiners.ToList()
            | "Merge" >> beam.Map(_merge, self.work_dir, self.file_sources)
        )
        if self.policy != "rename":
            return batches
        return batches | "Rename" >> beam.Map(_rename, beam.pvalue.AsSingleton(later))


def check(policy: str, work_dir: str) -> str | None:
    """After the run: log one line (`warn`), or return the problem that fails it (`error`)."""
    try:
        summary = json.loads(fs.read_bytes(fs.join(work_dir, SUMMARY)))
    except FileNotFoundError:
        return None
    if not summary["rows"]:
        return None
    ids = ", ".join(repr(i) for i in summary["ids"])
    msg = f"{summary['rows']} row(s) repeat an id an earlier row has (first: {ids})"
    if policy == "error":
        return f"{msg}; ids must be unique (set on_duplicate_id: rename or warn to accept)"
    if policy == "warn":
        log.warning("%s; counted as duplicate_ids in the manifest (on_duplicate_id: rename makes them unique)", msg)
    return None
