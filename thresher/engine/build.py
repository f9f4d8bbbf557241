"""Assemble and run one Beam pipeline from a `RunPlan`.

    sources -> Ingest -> stage 1 -> ... -> stage N -> WriteShards -> OUT/shards/
                  \\-> quarantine -> OUT/quarantine/        dropped rows -> OUT/dropped/

`run_pipeline` starts a new snapshot folder (`engine.snapshots`: earlier snapshots and the
`latest` pointer are not touched, so readers never see a half-written run), runs the pipeline
into it, and returns a `RunResult` with the Beam counters and the shard lists that
`flows.publish` turns into the manifest. The caller holds the folder's lock
(`engine.outdir.output_lock`) around start -> run -> publish.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from thresher.core import counters as names
from thresher.engine import dask_forkserver, duplicate_ids, snapshots
from thresher.engine.output_plan import shard_spec
from thresher.engine.plan import RunPlan
from thresher.io import fs, splits
from thresher.io.atomic import sweep_temp_files
from thresher.io.ingest import ReadSources, failed_reads
from thresher.io.shards import ShardSpec, WriteQuarantine, WriteShards

log = logging.getLogger("thresher.build")


@dataclass
class RunResult:
    out_dir: str
    counters: dict[str, int]
    shards: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    reports: dict[str, Any]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class BadInputError(RuntimeError):
    """Input the run cannot accept: too many malformed records in a source (over
    `max_bad_fraction`), a file that could not be read to its end, duplicate ids under
    `on_duplicate_id: error`."""


def start_snapshot(plan: RunPlan) -> None:
    """Give the run a new snapshot folder (under the lock: nobody else is writing). Unfinished
    snapshots of earlier, dead runs go first; finished ones stay until `publish` prunes."""
    fs.makedirs(plan.root_dir)
    snapshots.prune(plan.root_dir, keep=None)  # unfinished ones only
    sweep_temp_files(plan.root_dir)
    plan.bind_snapshot(snapshots.new_snapshot_id(plan.root_dir))
    snapshots.begin(plan.root_dir, plan.snapshot)
    fs.makedirs(plan.work_dir)


def build(plan: RunPlan, pipeline) -> None:
    """Add the whole curation graph to `pipeline`."""
    recipe, out = plan.recipe, plan.recipe.output
    batches, quarantine = pipeline | ReadSources(plan.tasks, recipe.batch_rows)
    file_sources = {t.file_index: t.source.name for t in plan.tasks}
    batches = batches | duplicate_ids.DuplicateIds(recipe.on_duplicate_id, plan.work_dir, file_sources)
    dropped = []
    for stage in plan.stages:
        t = stage.transform()
        batches = batches | t
        if t.dropped is not None:
            dropped.append(t.dropped)
    common = dict(seed=recipe.seed, max_rows=out.shard_max_rows, max_bytes=out.shard_max_bytes,
                  compression=out.compression, chunk_rows=recipe.batch_rows)
    spec = shard_spec(recipe, plan.stages)  # output.format/num_shards/columns/pack, relative source_file
    sort_by = out.sort_by if out.order == "sorted" else None
    if not out.splits:
        _ = batches | WriteShards(plan.out_dir, plan.work_dir, kind="shards", partitions=plan.partitions,
                                  sort_by=sort_by, spec=spec, **common)
    else:
        # One writer per split (a Filter each, not a multi-output step: see engine/dask_runner.py).
        fractions = list(out.splits.values())
        for i, name in enumerate(out.splits):
            _ = (batches | f"Split[{name}]" >> beam.FlatMap(splits.rows_of_split, i, fractions, recipe.seed)
                 | WriteShards(plan.out_dir, plan.work_dir, kind=f"shards/{name}", partitions=plan.partitions,
                               sort_by=sort_by, spec=spec, label=f"Write[shards/{name}]", **common))
    _ = quarantine | WriteQuarantine(plan.out_dir, plan.work_dir, base_dir=spec.base_dir)
    if dropped:
        # Diagnostics, not training data: Arrow IPC, every column, only `source_file` shaped.
        dropped_spec = ShardSpec(compression=out.compression, chunk_rows=recipe.batch_rows, base_dir=spec.base_dir)
        _ = (tuple(dropped) | "FlattenDropped" >> beam.Flatten()
             | WriteShards(plan.out_dir, plan.work_dir, kind="dropped", partitions=1, count_prefix=None,
                           label="Write[dropped]", spec=dropped_spec, **common))


def run_pipeline(plan: RunPlan) -> RunResult:
    """Run the plan's Beam pipeline to completion and collect its results."""
    if plan.local_dask:
        # A LocalCluster's workers fork from a server that imports thresher while this process
        # builds the graph (`engine/dask_forkserver.py`).
        dask_forkserver.prestart(sorted({type(s).__module__ for s in plan.stages}))
    start_snapshot(plan)
    log.info("writing snapshot %s", plan.out_dir)
    t0 = time.perf_counter()
    pipeline = beam.Pipeline(options=plan.pipeline_options())
    build(plan, pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - t0
    counters = _counters(result)
    work = plan.work_dir
    run = RunResult(
        out_dir=plan.out_dir, counters=counters, shards=_gather(work, "shards"),
        quarantine=_gather(work, "quarantine"), dropped=_gather(work, "dropped"),
        reports=_reports(work, plan.out_dir), seconds=seconds,
    )
    fs.write_bytes(fs.join(work, "run_result.json"), json.dumps(run.to_json()).encode())
    check_bad_fraction(plan, counters, failed_reads(plan.out_dir, run.quarantine))
    problem = duplicate_ids.check(plan.recipe.on_duplicate_id, work)
    if problem:
        raise BadInputError(problem)
    return run


def _counters(result) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(names.METRICS_NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def _gather(work: str, kind: str) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    # `shards/<split>/` with output.splits: each split's writer records under its own folder.
    for f in fs.glob(fs.join(work, kind, "part-*.json")) + fs.glob(fs.join(work, kind, "*", "part-*.json")):
        infos += json.loads(fs.read_bytes(f))
    for info in infos:
        if (split := splits.split_of_path(info["path"])) is not None:
            info["split"] = split
    return sorted(infos, key=lambda x: x["path"])


def _reports(work: str, out_dir: str) -> dict[str, Any]:
    """Stage summaries written during the run -> published under OUT/reports/."""
    out: dict[str, Any] = {}
    src = fs.join(work, "reports")
    names = [f for f in fs.listdir(src) if f.endswith(".json")]
    if not names:
        return out
    dst = fs.join(out_dir, "reports")
    fs.makedirs(dst)
    for f in names:
        data = fs.read_bytes(fs.join(src, f))
        out[f[:-5]] = json.loads(data)
        fs.write_bytes(fs.join(dst, f), data)
    return out


def check_bad_fraction(plan: RunPlan, counters: dict[str, int], failed: dict[str, list[str]] | None = None) -> None:
    """Fail the run (one line) for a source over `max_bad_fraction`, or with a file that could
    not be read to its end: its rows past the break are missing, whatever the fraction."""
    problems = []
    for s in plan.recipe.sources:
        read = counters.get(f"{names.READ}/{s.name}", 0)
        bad = counters.get(f"{names.QUARANTINED}/{s.name}", 0)
        unreadable = counters.get(f"{names.UNREADABLE}/{s.name}", 0)
        if unreadable:
            why = "; ".join((failed or {}).get(s.name, []))
            problems.append(
                f"source {s.name!r}: {unreadable} file(s) could not be read to the end"
                + (f": {why}" if why else "; see quarantine/ (rows with source_row -1)")
            )
        elif read and bad / read > s.max_bad_fraction:
            problems.append(
                f"source {s.name!r}: {bad} of {read} records ({bad / read:.1%}) were malformed, over "
                f"max_bad_fraction={s.max_bad_fraction:g}; see quarantine/ for each record's file, line "
                "and reason (raise max_bad_fraction to accept)"
            )
    if problems:
        raise BadInputError("; ".join(problems))
