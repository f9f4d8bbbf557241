"""Counter names: the one place that builds and parses them.

Every count the manifest adds up is a Beam metric in the `thresher` namespace, named

    read/<source>  quarantined/<source>  unreadable_files/<source>  written/<source>
    written_sum/<column>/<source>  written_rows/<column>/<source>
    <stage>/in/<source>  <stage>/dropped/<reason>/<source>  <stage>/<what>[/<source>]

Source and stage names are limited to `[A-Za-z0-9_.-]` by the recipe, so `/` splits them
safely; a drop reason may itself contain `/`-free text such as `contaminated:gsm8k`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import rows

METRICS_NAMESPACE = "thresher"
READ, QUARANTINED, WRITTEN, UNREADABLE = "read", "quarantined", "written", "unreadable_files"

_COUNTERS: dict[str, Any] = {}


def counter(name: str):
    """The Beam counter `name` (created once per process)."""
    c = _COUNTERS.get(name)
    if c is None:
        import apache_beam as beam

        c = _COUNTERS[name] = beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)
    return c


def count_by_source(prefix: str, batch: pa.RecordBatch | pa.Table) -> None:
    """Increment `<prefix>/<source>` by the number of rows of each source in `batch`."""
    if batch.num_rows == 0:
        return
    col = batch.column(rows.SOURCE)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    for item in pc.value_counts(col).to_pylist():
        counter(f"{prefix}/{item['values']}").inc(int(item["counts"]))


# Count columns whose per-source sums are counted as rows are written (`written_sum/...`),
# so the manifest's token totals come from the counters, never from reading shards back.
SUMMED_COLUMNS = ("n_tokens", "n_words")
WRITTEN_SUM, WRITTEN_ROWS = "written_sum", "written_rows"


def sum_by_source(batch: pa.RecordBatch | pa.Table, columns=SUMMED_COLUMNS) -> None:
    """For each of `columns` that `batch` has: `written_sum/<column>/<source>` += the column's
    sum and `written_rows/<column>/<source>` += rows (so a column that was there and summed to
    0 is told apart from one that never was)."""
    if batch.num_rows == 0:
        return
    present = [c for c in columns if c in batch.schema.names]
    if not present:
        return
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    grouped = table.select([rows.SOURCE, *present]).group_by(rows.SOURCE).aggregate(
        [(c, "sum") for c in present] + [([], "count_all")])
    for g in grouped.to_pylist():
        for c in present:
            counter(f"{WRITTEN_SUM}/{c}/{g[rows.SOURCE]}").inc(int(g[f"{c}_sum"] or 0))
            counter(f"{WRITTEN_ROWS}/{c}/{g[rows.SOURCE]}").inc(int(g["count_all"]))


def written_sums(counters: dict[str, int], column: str) -> tuple[dict[str, int], dict[str, int]] | None:
    """({source: rows}, {source: sum}) of `column` as written, or None when no written row had it."""
    rows_prefix, sum_prefix = f"{WRITTEN_ROWS}/{column}/", f"{WRITTEN_SUM}/{column}/"
    n = {k[len(rows_prefix):]: v for k, v in counters.items() if k.startswith(rows_prefix)}
    if not n:
        return None
    sums = {s: counters.get(sum_prefix + s, 0) for s in n}
    return n, sums


def stage_counter(stage: str, *parts: str):
    """The counter `<stage>/<part>/...` (a stage's own counts: model calls, device rows)."""
    return counter("/".join((stage, *parts)))


def stage_in(stage: str) -> str:
    return f"{stage}/in"


def stage_dropped(stage: str, reason: str) -> str:
    return f"{stage}/dropped/{reason}"


def cache_hits(stage: str):
    """Rows whose per-row result came from the row cache (`io/row_cache.py`)."""
    return stage_counter(stage, "cache", "hits")


def cache_misses(stage: str):
    """Rows computed because the row cache did not have them (then stored)."""
    return stage_counter(stage, "cache", "misses")


def cache_counts(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """{stage: {hits, misses}} for every stage that used the row cache (for the manifest)."""
    out: dict[str, dict[str, int]] = {}
    for k, v in counters.items():
        stage, sep, rest = k.rpartition("/cache/")
        if sep and rest in ("hits", "misses"):
            out.setdefault(stage, {"hits": 0, "misses": 0})[rest] += v
    return out


def stage_counters(counters: dict[str, int], stage: str) -> dict[str, int]:
    """`<stage>/...` counters with the stage prefix removed."""
    prefix = f"{stage}/"
    return {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}


def drops(counters: dict[str, int], stage: str) -> dict[str, dict[str, int]]:
    """{reason: {source: rows}} dropped by `stage`."""
    out: dict[str, dict[str, int]] = {}
    for k, v in stage_counters(counters, stage).items():
        if k.startswith("dropped/"):
            reason, _, source = k[len("dropped/"):].rpartition("/")
            out.setdefault(reason, {})[source] = out.get(reason, {}).get(source, 0) + v
    return out


def rows_in(counters: dict[str, int], stage: str) -> int:
    return sum(v for k, v in stage_counters(counters, stage).items() if k.startswith("in/"))


def per_source(counters: dict[str, int], sources: list[str], stages: list[str]) -> dict[str, dict[str, Any]]:
    """{source: {read, quarantined, dropped: {stage: {reason: n}}, written, balanced}}."""
    by_stage = {st: drops(counters, st) for st in stages}
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        dropped: dict[str, dict[str, int]] = {}
        for st, reasons in by_stage.items():
            mine = {r: per[s] for r, per in reasons.items() if s in per}
            if mine:
                dropped[st] = mine
        entry = {
            "read": counters.get(f"{READ}/{s}", 0),
            "quarantined": counters.get(f"{QUARANTINED}/{s}", 0),
            "dropped": dropped,
            "written": counters.get(f"{WRITTEN}/{s}", 0),
        }
        total_dropped = sum(v for d in dropped.values() for v in d.values())
        entry["balanced"] = entry["read"] == entry["written"] + entry["quarantined"] + total_dropped
        out[s] = entry
    return out
