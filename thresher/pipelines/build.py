"""Assemble and run one Beam pipeline from a recipe.

    sources -> Ingest -> stage 1 -> ... -> stage N -> WriteShards -> OUT/shards/
                  \\-> quarantine -> OUT/quarantine/        dropped rows -> OUT/dropped/

`run_pipeline` prepares the output directory (removes the old manifest first, so a directory
with a half-finished run never looks complete), runs the pipeline, and returns a `RunResult`
with the Beam counters and the shard lists that `flows.publish` turns into the manifest.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from thresher.schemas.recipe import Recipe

log = logging.getLogger("thresher.build")

WORK_DIR = "_work"
MANIFEST = "manifest.json"

# Runner names that mean "run here, in this process". Beam's DirectRunner first tries the
# Prism runner, which downloads a Go binary (fails offline, then silently falls back), so
# thresher names the in-process portable runner directly.
_LOCAL_RUNNERS = {"directrunner", "direct", "local", "fnapirunner"}
_FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclass
class RunResult:
    recipe_hash: str
    out_dir: str
    counters: dict[str, int]
    inputs: list[dict[str, Any]]
    shards: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    reports: dict[str, Any]
    seconds: float
    runner: str
    stage_names: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class BadInputError(RuntimeError):
    """Too many malformed records in a source (over `max_bad_fraction`)."""


def pipeline_options(recipe: Recipe, runner: str | None = None):
    from apache_beam.options.pipeline_options import PipelineOptions

    name = runner or recipe.runner.runner
    opts = dict(recipe.runner.options)
    if name.lower() in _LOCAL_RUNNERS:
        # FnApiRunner reads direct_num_workers / direct_running_mode itself.
        name = _FN_API_RUNNER
        if int(opts.get("direct_num_workers", 1) or 1) > 1:
            opts.setdefault("direct_running_mode", "multi_processing")
    # flags=[]: PipelineOptions would otherwise parse this process's sys.argv.
    return PipelineOptions(flags=[], runner=name, **opts), name


def prepare_out_dir(out_dir: str) -> None:
    from thresher.pipelines.atomic import sweep_temp_files

    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest):
        os.unlink(manifest)  # the directory stops looking complete before any shard changes
    sweep_temp_files(out_dir)
    shutil.rmtree(os.path.join(out_dir, WORK_DIR), ignore_errors=True)
    for sub in ("reports",):
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
    os.makedirs(os.path.join(out_dir, WORK_DIR), exist_ok=True)


def build(recipe: Recipe, pipeline, out_dir: str, inputs_tasks=None) -> dict[str, Any]:
    """Add the whole curation graph to `pipeline`. Returns facts for the run result."""
    import apache_beam as beam

    from thresher.pipelines.ingest import ReadSources, plan_reads
    from thresher.pipelines.registry import build_params
    from thresher.pipelines.shards import WriteQuarantine, WriteShards, auto_partitions
    from thresher.pipelines.stage import StageContext

    tasks, inputs = inputs_tasks or plan_reads(recipe)
    work_dir = os.path.join(out_dir, WORK_DIR)
    batches, quarantine = pipeline | ReadSources(tasks, recipe.batch_rows)
    dropped_sink: list[Any] = []
    stage_names = []
    for i, spec in enumerate(recipe.stages):
        cls, params = build_params(spec)
        name = spec.name or spec.type
        stage_names.append(name)
        ctx = StageContext(
            name=name, type=spec.type, seed=recipe.seed, out_dir=out_dir, work_dir=work_dir,
            recipe_json=recipe.canonical_json(), batch_rows=recipe.batch_rows,
            extras={"write_dropped": recipe.output.write_dropped, "dropped_sink": dropped_sink,
                    "recipe": recipe, "stage_index": i},
        )
        batches = batches | cls(params, ctx)
    out = recipe.output
    partitions = out.partitions if out.partitions != "auto" else auto_partitions(sum(x.size for x in inputs))
    common = dict(seed=recipe.seed, max_rows=out.shard_max_rows, max_bytes=out.shard_max_bytes,
                  compression=out.compression, chunk_rows=recipe.batch_rows)
    _ = batches | WriteShards(out_dir, work_dir, kind="shards", partitions=partitions, ipc_format=out.ipc_format,
                              sort_by=out.sort_by if out.order == "sorted" else None, **common)
    _ = quarantine | WriteQuarantine(out_dir, work_dir)
    if dropped_sink:
        _ = (tuple(dropped_sink) | "FlattenDropped" >> beam.Flatten()
             | WriteShards(out_dir, work_dir, kind="dropped", partitions=1, count_prefix=None,
                           label="Write[dropped]", **common))
    return {"inputs": [x.__dict__ for x in inputs], "stage_names": stage_names, "partitions": partitions}


def run_pipeline(recipe: Recipe, runner: str | None = None, out_dir: str | None = None) -> RunResult:
    """Validate inputs, run the Beam pipeline to completion and collect its results."""
    import apache_beam as beam

    from thresher.pipelines.ingest import plan_reads
    from thresher.pipelines.registry import build_params

    out_dir = os.path.abspath(out_dir or recipe.out_dir)
    # Everything that can be checked before work starts is checked now.
    planned = plan_reads(recipe)
    problems: list[str] = []
    for i, spec in enumerate(recipe.stages):
        cls, params = build_params(spec)
        problems += [f"stages.{i}.{p}" for p in cls.check(params, recipe)]
    if problems:
        from thresher.schemas.recipe import RecipeError

        raise RecipeError(problems, "recipe")

    prepare_out_dir(out_dir)
    options, runner_name = pipeline_options(recipe, runner)
    t0 = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    facts = build(recipe, pipeline, out_dir, planned)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - t0
    counters = _counters(result)
    work = os.path.join(out_dir, WORK_DIR)
    run = RunResult(
        recipe_hash=recipe.hash(), out_dir=out_dir, counters=counters, inputs=facts["inputs"],
        shards=_gather(work, "shards"), quarantine=_gather(work, "quarantine"),
        dropped=_gather(work, "dropped"), reports=_reports(work, out_dir), seconds=seconds,
        runner=runner_name, stage_names=facts["stage_names"],
    )
    with open(os.path.join(work, "run_result.json"), "w") as fh:
        json.dump(run.to_json(), fh)
    check_bad_fraction(recipe, counters)
    return run


def _counters(result) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    from thresher.pipelines.stage import METRICS_NAMESPACE

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def _gather(work: str, kind: str) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    for f in sorted(glob.glob(os.path.join(work, kind, "part-*.json"))):
        with open(f) as fh:
            infos += json.load(fh)
    return sorted(infos, key=lambda x: x["path"])


def _reports(work: str, out_dir: str) -> dict[str, Any]:
    """Stage summaries written during the run -> published under OUT/reports/."""
    out: dict[str, Any] = {}
    src = os.path.join(work, "reports")
    if not os.path.isdir(src):
        return out
    dst = os.path.join(out_dir, "reports")
    os.makedirs(dst, exist_ok=True)
    for f in sorted(os.listdir(src)):
        if f.endswith(".json"):
            with open(os.path.join(src, f)) as fh:
                out[f[:-5]] = json.load(fh)
            shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
    return out


def per_source_counts(counters: dict[str, int], sources: list[str], stages: list[str]) -> dict[str, dict[str, Any]]:
    """Counters -> {source: {read, quarantined, dropped: {stage: {reason: n}}, written}}."""
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        dropped: dict[str, dict[str, int]] = {}
        for st in stages:
            prefix = f"{st}/dropped/"
            reasons = {k[len(prefix):].rsplit("/", 1)[0]: v for k, v in counters.items()
                       if k.startswith(prefix) and k.rsplit("/", 1)[1] == s}
            if reasons:
                dropped[st] = reasons
        out[s] = {
            "read": counters.get(f"read/{s}", 0),
            "quarantined": counters.get(f"quarantined/{s}", 0),
            "dropped": dropped,
            "written": counters.get(f"written/{s}", 0),
        }
        total_dropped = sum(v for d in dropped.values() for v in d.values())
        out[s]["balanced"] = out[s]["read"] == out[s]["written"] + out[s]["quarantined"] + total_dropped
    return out


def check_bad_fraction(recipe: Recipe, counters: dict[str, int]) -> None:
    problems = []
    for s in recipe.sources:
        read = counters.get(f"read/{s.name}", 0)
        bad = counters.get(f"quarantined/{s.name}", 0)
        if read and bad / read > s.max_bad_fraction:
            problems.append(
                f"source {s.name!r}: {bad} of {read} records ({bad / read:.1%}) were malformed, over "
                f"max_bad_fraction={s.max_bad_fraction:g}; see quarantine/ for each record's file, line "
                "and reason (raise max_bad_fraction to accept)"
            )
    if problems:
        raise BadInputError("; ".join(problems))
