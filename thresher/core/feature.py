"""The feature template: a stage that adds columns to every batch (n-grams, embeddings).

A feature author writes `Params`, optionally `setup()` (once per worker), `columns(batch)`
returning a dict of new columns (or the whole batch), and optionally `summarise(batch)` /
`report(summary)` for the stage report. The template does the Beam wiring.

A stage whose cost per row falls when it sees more rows at once (the `embed` stage sorts texts
by length across them, so each model forward pads less) also returns a row budget from
`buffer_rows()` and overrides `columns_of(batches)`: the template then holds consecutive
batches of a bundle until they reach the budget (or the bundle ends) and hands them over
together. Each batch still comes out on its own, with its own columns, window and timestamp.
"""

from __future__ import annotations

from typing import Any, ClassVar

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.windowed_value import WindowedValue

from thresher.core import columns as cols
from thresher.core.reports import SumSummaries, report_path, write_report
from thresher.core.stage import Stage, overrides


class _Columns(beam.DoFn):
    def __init__(self, stage: Feature):
        self.stage = stage
        self._budget = 0
        self._held: list[WindowedValue] = []
        self._rows = 0

    def setup(self) -> None:
        self.stage.setup()
        self._budget = self.stage.buffer_rows()

    def start_bundle(self) -> None:
        self._held, self._rows = [], 0

    def _with(self, batch: pa.RecordBatch, out) -> pa.RecordBatch:
        if isinstance(out, pa.RecordBatch):
            return out
        if isinstance(out, dict):
            return cols.set_columns(batch, out)
        raise TypeError(f"{self.stage.name}: columns() must return a dict of columns or a RecordBatch")

    def process(self, batch: pa.RecordBatch, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        if self._budget <= 0:
            yield self._with(batch, self.stage.columns(batch))
            return
        # Held with its window and timestamp: a batch may leave in finish_bundle, which has neither.
        self._held.append(WindowedValue(batch, timestamp, (window,)))
        self._rows += batch.num_rows
        if self._rows >= self._budget:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        held, self._held, self._rows = self._held, [], 0
        if not held:
            return
        outs = self.stage.columns_of([h.value for h in held])
        if len(outs) != len(held):
            raise TypeError(f"{self.stage.name}: columns_of() returned {len(outs)} results for {len(held)} batches")
        for h, out in zip(held, outs, strict=True):
            yield h.with_value(self._with(h.value, out))


class FeatureTransform(beam.PTransform):
    """The one `expand()` every feature stage runs."""

    dropped = None  # features never drop rows

    def __init__(self, stage: Feature):
        super().__init__(label=stage.name)
        self.stage = stage

    def expand(self, batches):
        st = self.stage
        st.prepare()
        out = batches | "Columns" >> beam.ParDo(_Columns(st))
        if overrides(st, "summarise", Feature) or overrides(st, "report", Feature):
            light = st.without_worker_state()
            summary = out | "Summarise" >> beam.CombineGlobally(SumSummaries(light.summarise))
            report = summary | "Report" >> beam.Map(light.report)
            _ = report | "WriteReport" >> beam.Map(write_report, report_path(st.ctx.work_dir, st.name))
        return out


class Feature(Stage):
    """Base class of feature stages: `columns(batch)` adds columns; nothing is dropped."""

    _template = True
    kind: ClassVar[str] = "feature"

    @classmethod
    def contract_problems(cls) -> list[str]:
        return ["must define columns(batch)"] if cls.columns is Feature.columns else []

    def columns(self, batch: pa.RecordBatch) -> dict[str, Any] | pa.RecordBatch:
        raise NotImplementedError

    def buffer_rows(self) -> int:
        """Rows of consecutive batches to hold and pass to `columns_of` together (asked once per
        worker, after `setup()`); 0: each batch to `columns` as it comes (the default)."""
        return 0

    def columns_of(self, batches: list[pa.RecordBatch]) -> list[dict[str, Any] | pa.RecordBatch]:
        """`columns` of several batches at once, one result per batch, in order."""
        return [self.columns(b) for b in batches]

    def summarise(self, batch: pa.RecordBatch) -> dict[str, Any]:
        return {}

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        return summary

    def transform(self) -> FeatureTransform:
        return FeatureTransform(self)
