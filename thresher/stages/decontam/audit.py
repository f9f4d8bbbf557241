"""The decontamination audit: which row matched which benchmark item, how, and where.

A batch's match entries (`Entries`: parallel arrays, one element per (row, segment, method)
match) travel with the batch as one internal list<struct> column, `AUDIT` (one entry per
(row, item), best first); the stage's summaries gather the flagged rows' entries as flat
`AUDIT_SCHEMA` tables, and `write_audit` writes them, sorted, to
`OUT/reports/<stage>-audit.arrow` (Arrow IPC stream) and `.csv` and adds up the per-benchmark
report. Audit rows are few (only contaminated rows), so gathering them in one place is cheap.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import rows
from thresher.io.atomic import write_atomic

AUDIT = "__decontam_audit"

AUDIT_ENTRY = pa.struct([
    ("benchmark", pa.string()), ("item_id", pa.string()), ("segment", pa.int32()),
    ("method", pa.string()), ("score", pa.float32()), ("span", pa.string()),
])
AUDIT_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("source", pa.string()), ("benchmark", pa.string()),
    ("item_id", pa.string()), ("segment", pa.int32()), ("method", pa.string()),
    ("score", pa.float32()), ("span", pa.string()),
])
# The flat rows as gathered: the audit plus the row key that orders it.
_GATHERED_SCHEMA = AUDIT_SCHEMA.append(pa.field(rows.ROW_KEY, pa.uint64()))

# Entries: {"row", "item", "segment", "benchmark", "item_id", "method", "score", "span"} ->
# equal-length NumPy arrays.
Entries = dict[str, np.ndarray]


def concat_entries(a: Entries, b: Entries) -> Entries:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def best_per_row(entries: Entries, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best entry — n-gram matches first (exact evidence), then the higher score:
    (flagged mask, benchmark, item id, method), None where a row has no entry."""
    flagged = np.zeros(n_rows, bool)
    bench = np.full(n_rows, None, dtype=object)
    item = np.full(n_rows, None, dtype=object)
    method = np.full(n_rows, None, dtype=object)
    if len(entries["row"]):
        order = np.lexsort((-entries["score"], entries["method"] != "ngram", entries["row"]))
        e = {k: v[order] for k, v in entries.items()}
        first = np.ones(len(order), bool)
        first[1:] = e["row"][1:] != e["row"][:-1]
        r = e["row"][first]
        flagged[r] = True
        bench[r] = e["benchmark"][first]
        item[r] = e["item_id"][first]
        method[r] = e["method"][first]
    return flagged, bench, item, method


def audit_column(entries: Entries, n_rows: int) -> pa.Array:
    """Each row's entries as list<struct>; one entry per (row, item), best segment/method first."""
    if len(entries["row"]):
        order = np.lexsort((-entries["score"], entries["method"] != "ngram", entries["item"], entries["row"]))
        e = {k: v[order] for k, v in entries.items()}
        uniq = np.ones(len(order), bool)
        uniq[1:] = (e["row"][1:] != e["row"][:-1]) | (e["item"][1:] != e["item"][:-1])
        e = {k: v[uniq] for k, v in e.items()}
    else:
        e = entries
    values = pa.StructArray.from_arrays(
        [pa.array(e["benchmark"].tolist(), pa.string()), pa.array(e["item_id"].tolist(), pa.string()),
         pa.array(e["segment"], pa.int32()), pa.array(e["method"].tolist(), pa.string()),
         pa.array(e["score"], pa.float32()), pa.array(e["span"].tolist(), pa.string())],
        fields=list(AUDIT_ENTRY),
    )
    offsets = np.searchsorted(e["row"], np.arange(n_rows + 1)).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def flagged_mask(batch: pa.RecordBatch) -> pa.Array:
    """Rows with at least one audit entry."""
    return pc.greater(pc.list_value_length(batch.column(AUDIT)), 0)


def audit_rows(batch: pa.RecordBatch) -> pa.Table:
    """The flagged rows' audit entries as flat AUDIT_SCHEMA rows (+ row key for ordering)."""
    col = batch.column(AUDIT)
    parents = pc.list_parent_indices(col)
    if len(parents) == 0:
        return _GATHERED_SCHEMA.empty_table()
    flat = pc.list_flatten(col)
    cols = {
        "row_id": batch.column(rows.ID).take(parents), "source": batch.column(rows.SOURCE).take(parents),
        **{f.name: flat.field(f.name) for f in AUDIT_ENTRY},
        rows.ROW_KEY: batch.column(rows.ROW_KEY).take(parents),
    }
    return pa.table(cols, schema=_GATHERED_SCHEMA)


def gather(tables: list[pa.Table]) -> pa.Table:
    """Gathered audit rows, in one order whatever order the runner delivered them in."""
    t = pa.concat_tables([_GATHERED_SCHEMA.empty_table(), *tables])
    return t.sort_by([(rows.ROW_KEY, "ascending"), ("benchmark", "ascending"), ("item_id", "ascending"),
                      ("method", "ascending")])


def write_audit(table: pa.Table, out_dir: str, stage: str, static: dict[str, Any]) -> dict[str, Any]:
    """Write the audit (Arrow stream + CSV, atomically) and return the stage summary.

    `table`: `gather`'s output; `static`: what the stage knows before any row (settings, index
    sizes, `benchmark_items`, `unreadable`, `artifacts`)."""
    import pyarrow.csv as pacsv

    audit = table.drop_columns([rows.ROW_KEY])
    arrow_rel = f"reports/{stage}-audit.arrow"
    csv_rel = f"reports/{stage}-audit.csv"

    def write_arrow(fh):
        with pa.ipc.new_stream(fh, audit.schema) as w:
            w.write_table(audit)

    write_atomic(os.path.join(out_dir, arrow_rel), write_arrow)
    buf = io.BytesIO()
    pacsv.write_csv(audit, buf)
    write_atomic(os.path.join(out_dir, csv_rel), lambda fh: fh.write(buf.getvalue()))
    return {
        **{k: v for k, v in static.items() if k not in ("benchmark_items", "unreadable")},
        "benchmarks": per_benchmark(table, static["benchmark_items"], static["unreadable"]),
        "rows_flagged": len(set(table.column(rows.ROW_KEY).to_pylist())),
        "audit_entries": table.num_rows,
        "artifacts": [arrow_rel, csv_rel, *static.get("artifacts", [])],
    }


def per_benchmark(table: pa.Table, benchmark_items: dict[str, int], unreadable: dict[str, int]) -> dict[str, Any]:
    """Per benchmark: items, items found (by method), contamination rate, flagged rows (by source)."""
    py = table.select(["benchmark", "item_id", "method", "source"]).to_pylist()
    keys = table.column(rows.ROW_KEY).to_pylist()
    per: dict[str, Any] = {}
    for name, n_items in benchmark_items.items():
        per[name] = {"items": n_items, "items_found": 0, "contamination_rate": 0.0, "rows_flagged": 0,
                     "rows_flagged_by_source": {}, "items_found_by_method": {},
                     "segments_unreadable": unreadable.get(name, 0)}
    found: dict[str, set] = {}
    by_method: dict[tuple[str, str], set] = {}
    flagged_rows: dict[str, set] = {}
    by_source: dict[tuple[str, str], set] = {}
    for rec, key in zip(py, keys, strict=True):
        b = rec["benchmark"]
        found.setdefault(b, set()).add(rec["item_id"])
        by_method.setdefault((b, rec["method"]), set()).add(rec["item_id"])
        flagged_rows.setdefault(b, set()).add(key)
        by_source.setdefault((b, rec["source"]), set()).add(key)
    for b, s in found.items():
        per[b]["items_found"] = len(s)
        per[b]["contamination_rate"] = len(s) / max(per[b]["items"], 1)
        per[b]["rows_flagged"] = len(flagged_rows[b])
    for (b, m), s in by_method.items():
        per[b]["items_found_by_method"][m] = len(s)
    for (b, src), s in sorted(by_source.items()):
        per[b]["rows_flagged_by_source"][src] = len(s)
    return per
