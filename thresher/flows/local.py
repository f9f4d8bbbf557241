"""The `curate` flow's steps as plain calls, without Prefect: what `thresher run` does when no
Prefect API is configured (no temporary server to start, so a small run starts in seconds)."""

from __future__ import annotations

import logging

from thresher.engine.build import run_pipeline
from thresher.engine.fingerprint import up_to_date
from thresher.engine.outdir import output_lock
from thresher.engine.plan import RunPlan
from thresher.engine.snapshots import MANIFEST, snapshot_path
from thresher.flows.outcome import RunOutcome
from thresher.flows.publish import publish

log = logging.getLogger("thresher.run")


def current_snapshot(plan: RunPlan) -> RunOutcome | None:
    """The outcome "up to date" when the latest snapshot has this plan's fingerprint (and the
    plan is not forced); None when the run has work to do. Call it holding the lock."""
    if plan.force:
        return None
    sid = up_to_date(plan)
    if sid is None:
        return None
    manifest = f"{snapshot_path(plan.root_dir, sid)}/{MANIFEST}"
    log.info("up to date: snapshot %s has this recipe's and inputs' fingerprint (use --force to rerun)", sid)
    return RunOutcome.from_manifest("up_to_date", plan.root_dir, manifest)


def run_plan(plan: RunPlan) -> RunOutcome:
    """Run the plan's pipeline into a new snapshot and publish it, holding the output folder's
    lock (`OutputBusyError` when another run has it, unless `plan.wait_for_lock`)."""
    with output_lock(plan.root_dir, wait=plan.wait_for_lock):
        done = current_snapshot(plan)
        if done is not None:
            return done
        manifest = publish(plan, run_pipeline(plan))
        return RunOutcome.from_manifest("written", plan.root_dir, manifest)
