"""The selector contract: score columns, then a keep/drop decision with a reason.

A selector's batch function returns the batch with

* its score columns added (they travel to the shards, so a threshold can be changed later
  without recomputing features), and
* two decision columns: `__keep` (bool) and `__drop_reason` (string, null when kept).

`ApplyDecisions` then splits kept from dropped rows, counts drops per reason and source
(Beam counters `<stage>/dropped/<reason>/<source>`, which the manifest adds up), and sends
dropped rows, with `drop_stage`/`drop_reason` columns, to the run's `dropped/` output when
the recipe asks for it.

Row-local selectors (decontamination, variance filter, MCTS) subclass `RowSelector` and
implement a `BatchFn`; global ones (exact/semantic dedup, importance resampling) compute a
side input first and then use the same decision columns and `ApplyDecisions`.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.stage import BatchFn, MapBatches, Stage, count_by_source
from thresher.schemas import rows

KEEP = "__keep"
DROP_REASON = "__drop_reason"
DROPPED_TAG = "dropped"


def with_decisions(
    batch: pa.RecordBatch, keep: np.ndarray, reason: Any, scores: dict[str, Any] | None = None
) -> pa.RecordBatch:
    """Return `batch` plus score columns and the two decision columns.

    `reason` is one string for all dropped rows, or an array of strings (ignored where kept).
    """
    keep = np.asarray(keep, dtype=bool)
    out = batch
    for name, values in (scores or {}).items():
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        idx = out.schema.get_field_index(name)
        out = out.set_column(idx, name, arr) if idx >= 0 else out.append_column(name, arr)
    if isinstance(reason, str):
        reasons = pa.array(np.where(keep, None, reason).tolist(), type=pa.string())
    else:
        r = reason.to_pylist() if isinstance(reason, pa.Array) else list(reason)
        reasons = pa.array([None if k else x for k, x in zip(keep, r)], type=pa.string())
    out = out.append_column(KEEP, pa.array(keep, type=pa.bool_()))
    return out.append_column(DROP_REASON, reasons)


class _SplitDecisions(beam.DoFn):
    def __init__(self, stage: str, want_dropped: bool):
        self.stage = stage
        self.want_dropped = want_dropped

    def process(self, batch: pa.RecordBatch):
        keep = batch.column(KEEP)
        count_by_source(f"{self.stage}/in", batch)
        kept = batch.filter(keep).drop_columns([KEEP, DROP_REASON])
        if kept.num_rows:
            yield kept
        n_drop = batch.num_rows - kept.num_rows
        if not n_drop:
            return
        dropped = batch.filter(pc.invert(keep))
        reasons = dropped.column(DROP_REASON)
        reasons = pc.fill_null(reasons, "unspecified")
        for reason in pc.unique(reasons).to_pylist():
            part = dropped.filter(pc.equal(reasons, reason))
            count_by_source(f"{self.stage}/dropped/{reason}", part)
        if self.want_dropped:
            out = dropped.drop_columns([KEEP, DROP_REASON])
            out = out.append_column("drop_stage", pa.array([self.stage] * out.num_rows, pa.string()))
            out = out.append_column("drop_reason", reasons)
            yield beam.pvalue.TaggedOutput(DROPPED_TAG, out)


class ApplyDecisions(beam.PTransform):
    """Batches with decision columns -> kept batches; dropped rows counted and collected."""

    def __init__(self, stage: Stage):
        super().__init__(label=f"{stage.ctx.name}/ApplyDecisions")
        self.stage = stage

    def expand(self, batches):
        ctx = self.stage.ctx
        want = bool(ctx.extras.get("write_dropped"))
        res = batches | beam.ParDo(_SplitDecisions(ctx.name, want)).with_outputs(
            DROPPED_TAG, main="kept"
        )
        sink = ctx.extras.get("dropped_sink")
        if want and sink is not None:
            sink.append(res[DROPPED_TAG])
        return res["kept"]


class RowSelector(Stage):
    """A selector that decides each batch on its own, given what `make_fn` loads.

    Subclasses implement `make_fn()` returning a `BatchFn` whose output carries the decision
    columns (use `with_decisions`). Side inputs, if any, come from `side_input_views(pipeline)`
    (not `side_inputs`: Beam reads a PTransform's `side_inputs` attribute as a tuple).
    """

    def make_fn(self) -> BatchFn:
        raise NotImplementedError

    def side_input_views(self, pipeline: beam.Pipeline) -> tuple[Any, ...]:
        return ()

    def expand(self, batches):
        side = self.side_input_views(batches.pipeline)
        decided = batches | MapBatches(self.make_fn(), self.ctx.name, *side)
        return decided | ApplyDecisions(self)


def source_counts(batch: pa.RecordBatch) -> dict[str, int]:
    col = batch.column(rows.SOURCE)
    return {d["values"]: int(d["counts"]) for d in pc.value_counts(col).to_pylist()}
