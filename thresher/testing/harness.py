"""`run_stage`: run one stage on in-memory rows through a real Beam pipeline and get back
what it kept, what it dropped (with reasons), its counters and its report.

    from thresher.testing.harness import run_stage
    res = run_stage(MyFilter, [{"text": "a b c"}, {"text": "x"}], {"min_words": 2})
    res.kept.column("text"), res.dropped.column("drop_reason"), res.counters, res.report

Rows get the canonical columns they lack (`id`, `source` = "test", `source_file`,
`source_row`, `__row_key` = input position), so a test writes only what it cares about.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from thresher.core import rows
from thresher.core.context import StageContext
from thresher.core.registry import stage_class

_WORK = "_work"


@dataclass
class StageRun:
    kept: pa.Table  # public columns, in input order
    dropped: pa.Table  # the same plus `drop_stage`, `drop_reason`, in input order
    counters: dict[str, int]
    report: dict[str, Any] | None
    out_dir: str


def make_batch(records: list[dict[str, Any]], source: str = "test", first_key: int = 0) -> pa.RecordBatch:
    """Rows -> a canonical record batch (missing canonical columns filled in)."""
    n = len(records)
    table = pa.Table.from_pylist(records)
    cols: dict[str, pa.Array] = {}
    defaults = {
        rows.ID: pa.array([str(first_key + i) for i in range(n)], pa.string()),
        rows.SOURCE: pa.array([source] * n, pa.string()),
        rows.SOURCE_FILE: pa.array(["<memory>"] * n, pa.string()),
        rows.SOURCE_ROW: pa.array(range(first_key + 1, first_key + n + 1), pa.int64()),
    }
    for name in rows.CANONICAL_NAMES:
        cols[name] = table.column(name).combine_chunks() if name in table.column_names else defaults.get(name)
    if cols[rows.TEXT] is None:
        raise ValueError("every row needs a `text`")
    for name in table.column_names:
        if name not in cols:
            cols[name] = table.column(name).combine_chunks()
    cols[rows.ROW_KEY] = pa.array(range(first_key, first_key + n), pa.uint64())
    return pa.RecordBatch.from_pydict(cols)


def _batches(data: Any, batch_rows: int) -> list[pa.RecordBatch]:
    if isinstance(data, pa.RecordBatch):
        data = [data]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = [make_batch(data[i:i + batch_rows], first_key=i) for i in range(0, len(data), batch_rows)]
    return list(data)


class _Collect:
    """Writes each batch it sees to its own Arrow file (a pipeline cannot hand Python objects
    back to the driver, so results come back through files)."""

    def __init__(self, directory: str):
        self.directory = directory

    def __call__(self, batch: pa.RecordBatch) -> None:
        os.makedirs(self.directory, exist_ok=True)
        with pa.OSFile(os.path.join(self.directory, f"{uuid.uuid4().hex}.arrow"), "wb") as fh:
            with pa.ipc.new_stream(fh, batch.schema) as w:
                w.write_batch(batch)


def _read(directory: str) -> pa.Table:
    if not os.path.isdir(directory):
        return pa.table({})
    tables = [pa.ipc.open_stream(os.path.join(directory, f)).read_all() for f in sorted(os.listdir(directory))]
    if not tables:
        return pa.table({})
    t = pa.concat_tables(tables, promote_options="permissive")
    if rows.ROW_KEY in t.column_names:
        t = t.sort_by(rows.ROW_KEY)
    return rows.drop_internal(t)


def run_stage(stage: Any, data: Any, params: dict[str, Any] | None = None, *, name: str | None = None,
              seed: int = 0, batch_rows: int = 4096, out_dir: str | None = None,
              recipe: Any = None, cache_dir: str | None = None) -> StageRun:
    """Run `stage` (a class, a registered type name, `module:Class`, or a built stage) on
    `data` (dict rows, record batches) with a real Beam pipeline (in-process runner).
    `cache_dir`: the row cache's folder (default: none, so nothing is reused between calls)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from thresher.core.counters import METRICS_NAMESPACE
    from thresher.core.stage import Stage
    from thresher.recipe.schema import Recipe

    out = out_dir or tempfile.mkdtemp(prefix="thresher-stage-")
    if isinstance(stage, Stage):
        obj = stage
    else:
        cls = stage_class(stage) if isinstance(stage, str) else stage
        if recipe is None:
            recipe = Recipe.model_validate({"sources": [{"name": "test", "paths": ["<memory>"]}],
                                            "seed": seed, "base_dir": out})
        ctx = StageContext(name=name or cls.type_name or cls.__name__, seed=seed, out_dir=out,
                           work_dir=os.path.join(out, _WORK), recipe=recipe, write_dropped=True,
                           cache_dir=cache_dir)
        obj = cls(params or {}, ctx)
    problems = obj.check()
    if problems:
        raise ValueError(f"{obj.name}: " + "; ".join(problems))
    batches = _batches(data, batch_rows)
    opts = PipelineOptions(flags=[], runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner")
    p = beam.Pipeline(options=opts)
    t = obj.transform()
    kept = p | "Rows" >> beam.Create(batches, reshuffle=False) | t
    _ = kept | "CollectKept" >> beam.Map(_Collect(os.path.join(out, _WORK, "kept")))
    if t.dropped is not None:
        _ = t.dropped | "CollectDropped" >> beam.Map(_Collect(os.path.join(out, _WORK, "dropped")))
    result = p.run()
    result.wait_until_finish()
    counters: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + int(value or 0)
    report_file = os.path.join(out, _WORK, "reports", f"{obj.name}.json")
    report = None
    if os.path.exists(report_file):
        with open(report_file) as fh:
            report = json.load(fh)
    return StageRun(kept=_read(os.path.join(out, _WORK, "kept")), dropped=_read(os.path.join(out, _WORK, "dropped")),
                    counters=dict(sorted(counters.items())), report=report, out_dir=out)
