"""The `curate` Prefect flow: plan -> lock -> up-to-date check -> run the Beam pipeline ->
publish the manifest -> artifacts.

`thresher run` resolves the recipe into a `RunPlan` (so a bad recipe exits 2 before Prefect
starts) and hands it to this flow; a deployment's run passes only the recipe path and the
flow plans itself. With no Prefect server configured, Prefect starts a temporary local API
for the process (no set-up needed); point PREFECT_API_URL at a server to see runs in its UI.
Scheduling (`serve`, `deploy`) lives in `thresher.flows.deploy`.

What a run leaves in Prefect:
* artifacts (`thresher.flows.artifacts`): rows per source, each stage's report, links to the
  snapshot's manifest (and report.html);
* logs: thresher's own `thresher.*` records, beside the flow's, from any thread of this
  process (Beam's in-process workers included; a multi-process runner's workers log to their
  own stderr only);
* a persisted JSON result, the `RunOutcome` dict (`flow_run.state.result()` reads it back).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from thresher.engine.build import run_pipeline
from thresher.engine.outdir import output_lock
from thresher.engine.plan import RunPlan, plan_recipe
from thresher.flows.artifacts import build_artifacts, publish_artifacts
from thresher.flows.local import current_snapshot
from thresher.flows.outcome import RunOutcome
from thresher.flows.publish import publish

# Task results are plans and pipeline results, live objects for the next step only: not
# persisted (the flow's own result is), so no cache either.
_TASK = {"persist_result": False, "cache_policy": NO_CACHE}


@task(name="plan-run", **_TASK)
def plan_task(recipe_path: str, out: str | None, runner: str | None, overrides: dict[str, Any] | None) -> RunPlan:
    return plan_recipe(recipe_path, out, runner, overrides)


@task(name="run-beam-pipeline", **_TASK)
def run_beam(plan: RunPlan):
    log = get_run_logger()
    log.info("running %d source(s) through %d stage(s) into %s", len(plan.recipe.sources), len(plan.stages),
             plan.out_dir)
    run = run_pipeline(plan)
    log.info("pipeline finished in %.1f s: %d shard(s)", run.seconds, len(run.shards))
    return run


# Publishing touches only the local/remote filesystem; retries cover a flaky mount.
@task(name="publish-manifest", retries=3, retry_delay_seconds=2, **_TASK)
def publish_manifest(plan: RunPlan, run) -> str:
    path = publish(plan, run)
    get_run_logger().info("manifest written: %s", path)
    return path


class FlowRunLogHandler(APILogHandler):
    """Prefect's API log handler, made to file records from threads with no Prefect context
    (Beam's worker threads) under the flow run it was made in: such a record is emitted inside
    a copy of the flow's context (its run, its settings: the API it reports to) instead of
    being dropped with a 'missing flow run' warning. Records inside a task keep their task run."""

    def __init__(self) -> None:
        super().__init__()
        self.flow_context = contextvars.copy_context()

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() or TaskRunContext.get():
            super().emit(record)
        else:  # a copy per record: one context cannot be entered by two threads at once
            self.flow_context.copy().run(super().emit, record)


@contextlib.contextmanager
def thresher_logs_to_run(name: str = "thresher") -> Iterator[None]:
    """Send `thresher.*` log records (INFO and up) to the current flow run's logs while the
    block runs; outside a flow run, do nothing.

    An explicit handler rather than PREFECT_LOGGING_EXTRA_LOGGERS: that setting is read once,
    when Prefect configures logging on import (too late once the CLI has imported it), and
    its handler drops records from threads that carry no run context."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        yield
        return
    logger = logging.getLogger(name)
    handler = FlowRunLogHandler()
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:  # a library caller left logging at WARNING
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@flow(name="thresher-curate", log_prints=True, validate_parameters=False, persist_result=True,
      result_serializer="json")
def curate(recipe_path: str, out: str | None = None, runner: str | None = None,
           overrides: dict[str, Any] | None = None, plan: RunPlan | None = None,
           force: bool = False) -> dict[str, Any]:
    """Curate a corpus as the recipe says into a new snapshot; returns a `RunOutcome` as a dict."""
    with thresher_logs_to_run():
        if plan is None:  # a deployment's run: only the recipe path comes in
            plan = plan_task(recipe_path, out, runner, overrides)
            plan.force = force
        get_run_logger().info("recipe %s is valid (sha256 %s): %d input file(s), %d stage(s) -> %s", recipe_path,
                              plan.recipe.hash()[:12], len(plan.inputs), len(plan.stages), plan.out_dir)
        # One run per output folder, from before it is prepared until the manifest is out; the
        # lock goes with this process (released on failure, and by the kernel on SIGKILL).
        with output_lock(plan.root_dir, wait=plan.wait_for_lock):
            outcome = current_snapshot(plan)  # "up to date" logs its own line (thresher.run)
            if outcome is None:
                run = run_beam(plan)
                manifest = publish_manifest(plan, run)
                outcome = RunOutcome.from_manifest("written", plan.root_dir, manifest)
        publish_artifacts(build_artifacts(outcome.status, _load(outcome.manifest), outcome.snapshot_dir))
        return outcome.to_dict()


def _load(path: str) -> dict[str, Any]:
    import json

    from thresher.io import fs

    return json.loads(fs.read_bytes(path))
