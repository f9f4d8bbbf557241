"""The selector template: score -> [select] -> decide -> apply decisions -> report.

A selector author writes (all but `decide` optional):

    Params                       the recipe's params (pydantic, unknown keys rejected)
    setup()                      once per worker before `score` (load a model)
    score(batch) -> columns      per batch: score columns (dict name -> array, or a batch);
                                 they travel to the shards, so thresholds can change later
    select(scored) -> PCollection  a global step over all scored batches (a combiner, a
                                 shuffle) whose single element is handed to `decide`
    select_keyed(scored[, selected]) -> PCollection  a keyed global step: decisions made where
                                 rows meet (grouped by a hash, a cluster), emitted as
                                 (batch key, part) pairs (`thresher.core.keyed`); each batch is
                                 joined to its own parts (a CoGroupByKey), and `decide` gets the
                                 list of them instead of `select`'s result, which (if the stage
                                 also defines `select`) goes to `select_keyed` as a PCollection
                                 and to `report` — so no per-row decision is ever broadcast
    decide(batch[, selected])    -> (keep, reason) or (keep, reason, columns): `keep` a bool per
                                 row, `reason` one string or one per row (read where dropped)
    summarise(batch, keep) -> dict   per batch; numbers and arrays add, lists concatenate
    report(summary[, selected]) -> dict   the stage's report (reports/<stage>.json, manifest)
    score_thresholds() -> dict   score column -> the threshold(s) `decide` applies to it, for
                                 the score sample (the HTML report marks them on histograms)
    internal_columns             columns only the stage's own steps use: never written
    dropped_only_columns         columns that only mean something on dropped rows (`dropped/`)

and gets for free: one Beam wiring for every selector, counters `<stage>/in/<source>` and
`<stage>/dropped/<reason>/<source>` (the manifest adds them up per source), dropped rows with
`drop_stage`/`drop_reason` in `OUT/dropped/` when the recipe asks, internal columns stripped,
the report written. Decisions are the columns `__keep` / `__drop_reason` between `decide` and
the split; a stage never touches them.

Score sample: for a stage with a summary step (it defines `summarise`, `report` or `score`),
the template also keeps a bounded sample (`score_sample_size` rows, bottom-k by a hash of the
row key, so the same rows for any batching) of every numeric column `score()` or `decide()`
added, kept and dropped rows alike, with exact totals, and writes it to
`reports/<stage>.score_sample.json` (see `thresher.report.sample`); the stage's own report is
unchanged. The names of those columns ride from score to summary as metadata on the `__keep`
field (and, between `score` and `decide` of a global selector, on the batch's schema).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core import columns as cols
from thresher.core import counters, keyed, rows
from thresher.core.reports import SumSummaries, report_path, write_report
from thresher.core.stage import Hook, Stage, overrides
from thresher.report import sample as score_sample

KEEP = "__keep"
DROP_REASON = "__drop_reason"
DROPPED_TAG = "dropped"
DROP_STAGE_COLUMN, DROP_REASON_COLUMN = "drop_stage", "drop_reason"
SAMPLE_KEY = "__score_sample"  # reserved summary key: the score sample, taken out before report()
SCORED_META = b"thresher.score_columns"


def with_decisions(batch: pa.RecordBatch, keep: Any, reason: Any,
                   columns: dict[str, Any] | None = None) -> pa.RecordBatch:
    """`batch` plus `columns` and the two decision columns (`reason` read only where dropped)."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (batch.num_rows,):
        raise ValueError(f"decide() returned {keep.shape[0] if keep.ndim else 'a scalar'} keep flags "
                         f"for a batch of {batch.num_rows} rows")
    out = cols.set_columns(batch, columns)
    # One Arrow kernel, not a Python loop per row: this runs on every row of every selector.
    kept = pa.array(keep, type=pa.bool_())
    if reason is None or isinstance(reason, str):
        given = pa.scalar(reason or "unspecified", pa.string())
    else:
        given = reason.combine_chunks() if isinstance(reason, pa.ChunkedArray) else reason
        given = given if isinstance(given, pa.Array) else pa.array(list(given), type=pa.string())
        if len(given) != batch.num_rows:
            raise ValueError(f"decide() returned {len(given)} reasons for a batch of {batch.num_rows} rows")
        given = given.cast(pa.string())
    reasons = pc.if_else(kept, pa.scalar(None, pa.string()), given)
    out = out.append_column(KEEP, kept)
    return out.append_column(DROP_REASON, reasons)


def _columns_out(batch: pa.RecordBatch, out: Any, hook: str) -> pa.RecordBatch:
    if out is None:
        return batch
    if isinstance(out, pa.RecordBatch):
        return out
    if isinstance(out, dict):
        return cols.set_columns(batch, out)
    raise TypeError(f"{hook}() must return a dict of columns, a RecordBatch or None, not {type(out).__name__}")


def _added(before: pa.RecordBatch, out: Any, after: pa.RecordBatch) -> list[str]:
    """The columns a hook returned (`out`: its dict of columns, or a whole batch)."""
    if isinstance(out, dict):
        return list(out)
    if isinstance(out, pa.RecordBatch):
        return [n for n in after.schema.names if n not in before.schema.names]
    return []


def _decided(batch: pa.RecordBatch, decision: tuple, scored: list[str]) -> pa.RecordBatch:
    """`with_decisions`, with the names of the columns score/decide added noted on `__keep`."""
    out = with_decisions(batch, *decision)
    extra = decision[2] if len(decision) == 3 and isinstance(decision[2], dict) else {}
    names = list(dict.fromkeys([*scored, *extra]))
    idx = out.schema.get_field_index(KEEP)
    field = pa.field(KEEP, pa.bool_(), metadata={SCORED_META: json.dumps(names)})
    return out.set_column(idx, field, out.column(idx))


def _scored_names(batch: pa.RecordBatch, meta_of: pa.Schema | pa.Field | None) -> list[str]:
    meta = (meta_of.metadata if meta_of is not None else None) or {}
    return json.loads(meta[SCORED_META]) if SCORED_META in meta else []


def _takes_selected(function) -> bool:
    """Does `decide` (a function defined in a class: self first) take a `selected` argument?"""
    sig = inspect.signature(function).parameters.values()
    positional = [p for p in sig if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in sig)


class _Score(beam.DoFn):
    def __init__(self, stage: Selector):
        self.stage = stage

    def setup(self) -> None:
        self.stage.setup()

    def process(self, batch: pa.RecordBatch):
        out = self.stage.score(batch)
        scored = _columns_out(batch, out, "score")
        names = _added(batch, out, scored)
        if names:  # for _Decide, which takes the names off again
            meta = {**(scored.schema.metadata or {}), SCORED_META: json.dumps(names).encode()}
            scored = scored.replace_schema_metadata(meta)
        yield scored


class _ScoreDecide(beam.DoFn):
    """A row-local selector's whole per-batch work in one step: one copy of the stage (and of
    what `prepare()` built) per worker, one DoFn call per batch."""

    def __init__(self, stage: Selector):
        self.stage = stage

    def setup(self) -> None:
        self.stage.setup()

    def process(self, batch: pa.RecordBatch):
        out = self.stage.score(batch)
        scored = _columns_out(batch, out, "score")
        yield _decided(scored, _decision(self.stage, self.stage.decide(scored)), _added(batch, out, scored))


def _decision(stage: Selector, out: Any) -> tuple:
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise TypeError(f"{stage.name}: decide() must return (keep, reason) or (keep, reason, columns)")
    return out


class _Decide(beam.DoFn):
    """A global selector's decisions, given its `select` step's result."""

    def __init__(self, stage: Selector):
        self.stage = stage

    def process(self, batch: pa.RecordBatch, selected):
        names = _scored_names(batch, batch.schema)
        if names:
            meta = {k: v for k, v in batch.schema.metadata.items() if k != SCORED_META}
            batch = batch.replace_schema_metadata(meta or None)
        yield _decided(batch, _decision(self.stage, self.stage.decide(batch, selected)), names)


class _DecideJoined(_Decide):
    """A keyed global selector's decisions: each batch with the parts its key collected."""

    def process(self, element):
        key, joined = element
        batches, parts = list(joined[keyed.ROWS]), list(joined[keyed.PARTS])
        if parts and not batches:
            raise ValueError(f"{self.stage.name}: select_keyed() emitted decisions under key {key}, which no batch "
                             "has; key each part by thresher.core.keyed.batch_key() of the batch holding its rows")
        for batch in batches:  # several only where empty batches (key 0) meet the batch whose lowest row key is 0
            yield from super().process(batch, parts)


class _Summarise:
    """Picklable adaptor: a decided batch -> the stage's summary of it."""

    def __init__(self, stage: Selector):
        self.stage = stage

    def __call__(self, batch: pa.RecordBatch) -> dict:
        keep = batch.column(KEEP).to_numpy(zero_copy_only=False)
        out = self.stage.summarise(batch, keep) or {}
        # Dropped-only columns (dup_of, dup_cluster: ids and row keys) are not scores.
        skip = set(self.stage.internal_columns) | set(self.stage.dropped_only_columns)
        names = [n for n in _scored_names(batch, batch.schema.field(KEEP))
                 if n in batch.schema.names and n not in skip and not rows.is_internal(n)
                 and score_sample.is_score_type(batch.schema.field(n).type)]
        if names:
            try:
                hashes = score_sample.row_hashes(batch, rows.ROW_KEY, rows.ID)
                sample = score_sample.ScoreSample.of_batch(batch, keep, names, hashes, self.stage.score_sample_size)
            except Exception as exc:  # the sample only feeds report.html: it must not fail the run
                logging.getLogger(__name__).warning("%s: score sample of a batch failed: %s", self.stage.name, exc)
                sample = score_sample.ScoreSample.failed(batch, f"{type(exc).__name__}: {exc}")
            out = {**out, SAMPLE_KEY: sample}
        return out


def _finish_report(summary: dict, stage: Selector, *side) -> dict:
    summary = {k: v for k, v in summary.items() if k != SAMPLE_KEY}
    return stage.report(summary, side[0]) if side else stage.report(summary)


def _write_sample(summary: dict, stage: Selector, path: str) -> None:
    score_sample.write_sample(summary.get(SAMPLE_KEY), path, stage.name, stage.score_thresholds())


class _Apply(beam.DoFn):
    """Count, split kept from dropped, strip what must not be written."""

    def __init__(self, stage: str, want_dropped: bool, internal: tuple[str, ...], dropped_only: tuple[str, ...]):
        self.stage = stage
        self.want_dropped = want_dropped
        self.internal = internal
        self.dropped_only = dropped_only

    def process(self, batch: pa.RecordBatch):
        counters.count_by_source(counters.stage_in(self.stage), batch)
        keep = batch.column(KEEP)
        batch = cols.drop_columns(batch, self.internal)
        kept = cols.drop_columns(batch.filter(keep), (KEEP, DROP_REASON, *self.dropped_only))
        if kept.num_rows:
            yield kept
        if kept.num_rows == batch.num_rows:
            return
        dropped = batch.filter(pc.invert(keep))
        reasons = pc.fill_null(dropped.column(DROP_REASON), "unspecified")
        # Counted on (source, reason) alone: filtering the whole dropped batch once per reason
        # copied its text each time (measured ~0.14 s per 280k rows in bench/dsir.py).
        pairs = pa.table({"s": dropped.column(rows.SOURCE), "r": reasons})
        pairs = pairs.group_by(["r", "s"]).aggregate([([], "count_all")])
        for reason, source, n in zip(*(pairs.column(c).to_pylist() for c in ("r", "s", "count_all")),
                                     strict=True):
            counters.counter(f"{counters.stage_dropped(self.stage, reason)}/{source}").inc(n)
        if self.want_dropped:
            out = dropped.drop_columns([KEEP, DROP_REASON])
            out = out.append_column(DROP_STAGE_COLUMN, pa.array([self.stage] * out.num_rows, pa.string()))
            yield beam.pvalue.TaggedOutput(DROPPED_TAG, out.append_column(DROP_REASON_COLUMN, reasons))


class SelectorTransform(beam.PTransform):
    """The one `expand()` every selector runs. After it is applied, `dropped` holds the
    dropped rows (when the run writes them), for the pipeline builder."""

    def __init__(self, stage: Selector):
        super().__init__(label=stage.name)
        self.stage = stage
        self.dropped: beam.PCollection | None = None

    def expand(self, batches):
        st = self.stage
        st.prepare()
        light = st.without_worker_state()
        side: tuple = ()
        keyed_step = overrides(st, "select_keyed", Selector)
        if not keyed_step and not overrides(st, "select", Selector):
            decided = batches | "ScoreDecide" >> beam.ParDo(_ScoreDecide(st))
        else:
            scored = batches | "Score" >> beam.ParDo(_Score(st)) if overrides(st, "score", Selector) else batches
            selected = scored | Hook(st.select, label="Select") if overrides(st, "select", Selector) else None
            side = (beam.pvalue.AsSingleton(selected),) if selected is not None else ()
            if keyed_step:
                parts = scored | Hook(st.select_keyed, *(() if selected is None else (selected,)), label="SelectKeyed")
                decided = ({keyed.ROWS: scored | "KeyBatches" >> beam.Map(keyed.key_batch), keyed.PARTS: parts}
                           | "JoinDecisions" >> beam.CoGroupByKey()
                           | "Decide" >> beam.ParDo(_DecideJoined(light)))
            else:
                decided = scored | "Decide" >> beam.ParDo(_Decide(light), *side)
        reports = overrides(st, "summarise", Selector) or overrides(st, "report", Selector)
        if reports or overrides(st, "score", Selector):
            summary = decided | "Summarise" >> beam.CombineGlobally(SumSummaries(_Summarise(light)))
            path = score_sample.sample_path(os.path.dirname(report_path(st.ctx.work_dir, st.name)), st.name)
            _ = summary | "WriteScoreSample" >> beam.Map(_write_sample, light, path)
        if reports:
            report = summary | "Report" >> beam.Map(_finish_report, light, *side)
            _ = report | "WriteReport" >> beam.Map(write_report, report_path(st.ctx.work_dir, st.name))
        apply = _Apply(st.name, st.ctx.write_dropped, tuple(st.internal_columns), tuple(st.dropped_only_columns))
        res = decided | "Apply" >> beam.ParDo(apply).with_outputs(DROPPED_TAG, main="kept")
        if st.ctx.write_dropped:
            self.dropped = res[DROPPED_TAG]
        return res["kept"]


class Selector(Stage):
    """Base class of selectors: see the module docstring for the hooks."""

    _template = True
    kind: ClassVar[str] = "selector"
    internal_columns: ClassVar[tuple[str, ...]] = ()
    dropped_only_columns: ClassVar[tuple[str, ...]] = ()
    score_sample_size: ClassVar[int] = score_sample.DEFAULT_SIZE  # rows sampled (at most 5,000)

    @classmethod
    def contract_problems(cls) -> list[str]:
        """What keeps this class from running as a selector (checked when a recipe names it)."""
        if cls.decide is Selector.decide:
            return ["must define decide(batch) -> (keep, reason)"]
        for hook in ("select", "select_keyed"):
            if getattr(cls, hook) is not getattr(Selector, hook) and not _takes_selected(cls.decide):
                return [f"defines {hook}(), so decide() must take (batch, selected)"]
        return []

    def score(self, batch: pa.RecordBatch) -> dict[str, Any] | pa.RecordBatch | None:
        return None

    def select(self, scored: beam.PCollection) -> beam.PCollection:
        raise NotImplementedError

    def select_keyed(self, scored: beam.PCollection, *selected: beam.PCollection) -> beam.PCollection:
        raise NotImplementedError

    def decide(self, batch: pa.RecordBatch, selected: Any = None):
        raise NotImplementedError

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        return {}

    def report(self, summary: dict[str, Any], selected: Any = None) -> dict[str, Any]:
        return summary

    def score_thresholds(self) -> dict[str, float | list[float]]:
        """Score column -> the threshold(s) `decide` compares it with (none by default)."""
        return {}

    def transform(self) -> SelectorTransform:
        return SelectorTransform(self)
