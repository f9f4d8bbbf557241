"""The feature template: a stage that adds columns to every batch (n-grams, embeddings).

A feature author writes `Params`, optionally `setup()` (once per worker), `columns(batch)`
returning a dict of new columns (or the whole batch), and optionally `summarise(batch)` /
`report(summary)` for the stage report. The template does the Beam wiring.
"""

from __future__ import annotations

from typing import Any, ClassVar

import apache_beam as beam
import pyarrow as pa

from thresher.core import columns as cols
from thresher.core.reports import SumSummaries, report_path, write_report
from thresher.core.stage import Stage, overrides


class _Columns(beam.DoFn):
    def __init__(self, stage: Feature):
        self.stage = stage

    def setup(self) -> None:
        self.stage.setup()

    def process(self, batch: pa.RecordBatch):
        out = self.stage.columns(batch)
        if isinstance(out, pa.RecordBatch):
            yield out
        elif isinstance(out, dict):
            yield cols.set_columns(batch, out)
        else:
            raise TypeError(f"{self.stage.name}: columns() must return a dict of columns or a RecordBatch")


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

    def summarise(self, batch: pa.RecordBatch) -> dict[str, Any]:
        return {}

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        return summary

    def transform(self) -> FeatureTransform:
        return FeatureTransform(self)
