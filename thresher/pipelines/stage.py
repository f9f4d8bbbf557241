"""The stage contract: what every feature stage and selector is.

A stage is a Beam `PTransform` from a PCollection of `pyarrow.RecordBatch` to a PCollection
of `pyarrow.RecordBatch`. It is built from its validated params (a pydantic model, the
recipe's `params:` mapping) and a `StageContext` (run-wide facts: seed, output directory).

Most stages do their work one batch at a time: they implement a `BatchFn` (plain, picklable:
`setup()` once per worker, `__call__(batch) -> batch`) and apply it with `MapBatches`, which
costs one DoFn call per batch rather than one per row. Global stages (importance resampling,
semantic dedup) write their own `expand` with combiners and side inputs.

Stats: counters go through Beam metrics (`count()` below), named
`<stage>/<what>/<source>`; a summary dict a stage computes in the pipeline goes through
`StageContext.write_report`, which lands in `OUT/reports/<stage>.json` and the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from thresher.schemas import rows

METRICS_NAMESPACE = "thresher"


class StageParams(BaseModel):
    """Base for every stage's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """Run-wide facts a stage may need. Picklable: safe to hand to DoFns."""

    name: str
    type: str
    seed: int
    out_dir: str
    work_dir: str
    recipe_json: str = "{}"
    batch_rows: int = 4096
    # Filled by the pipeline builder (not picklable state lives there, not here).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def reports_dir(self) -> str:
        return os.path.join(self.out_dir, "reports")

    @property
    def indexes_dir(self) -> str:
        return os.path.join(self.out_dir, "indexes")

    def write_report(self, summary: beam.PCollection) -> None:
        """Write a PCollection holding one dict as `OUT/reports/<stage>.json` (atomically)."""
        path = os.path.join(self.work_dir, "reports", f"{self.name}.json")
        summary | f"{self.name}/WriteReport" >> beam.Map(_write_json_atomic, path)


def _write_json_atomic(obj: Any, path: str) -> str:
    from thresher.pipelines.atomic import write_bytes_atomic

    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


class Stage(beam.PTransform):
    """Base class of every stage. Subclasses set `type_name`, `Params` and `expand`."""

    type_name: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams
    # Said in each stage's docstring too; kept here for `thresher stages`.
    cost: ClassVar[str] = ""

    def __init__(self, params: StageParams, ctx: StageContext):
        super().__init__(label=ctx.name)
        self.params = params
        self.ctx = ctx

    @classmethod
    def check(cls, params: StageParams, recipe: Any) -> list[str]:
        """Problems found before the pipeline starts (missing files, models): 'key: msg'."""
        return []


class BatchFn:
    """One batch in, one batch out. Plain Python so it pickles to any runner's workers."""

    def setup(self) -> None:  # once per worker (DoFn.setup)
        pass

    def __call__(self, batch: pa.RecordBatch, *side_inputs: Any) -> pa.RecordBatch | None:
        raise NotImplementedError


class _BatchFnDoFn(beam.DoFn):
    def __init__(self, fn: BatchFn, stage: str):
        self.fn = fn
        self.stage = stage

    def setup(self) -> None:
        self.fn.setup()

    # No annotation on *side_inputs: Beam type-checks it as Tuple and rejects a ParDo without side inputs.
    def process(self, batch: pa.RecordBatch, *side_inputs):
        out = self.fn(batch, *side_inputs)
        if out is not None and out.num_rows:
            yield out


class MapBatches(beam.PTransform):
    """Apply a `BatchFn` to every batch (optionally with side inputs)."""

    def __init__(self, fn: BatchFn, stage: str, *side_inputs: Any, label: str | None = None):
        super().__init__(label=label or f"{stage}/MapBatches")
        self.fn = fn
        self.stage = stage
        self.side_inputs = side_inputs

    def expand(self, batches):
        return batches | beam.ParDo(_BatchFnDoFn(self.fn, self.stage), *self.side_inputs)


# ---------------------------------------------------------------------------------------
# Counting
_COUNTERS: dict[str, Any] = {}


def counter(name: str):
    c = _COUNTERS.get(name)
    if c is None:
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
