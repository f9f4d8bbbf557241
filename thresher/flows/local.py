"""The `curate` flow's steps as plain calls, without Prefect (`thresher run --no-prefect`)."""

from __future__ import annotations

from thresher.engine.build import run_pipeline
from thresher.engine.outdir import output_lock
from thresher.engine.plan import RunPlan
from thresher.flows.publish import publish


def run_plan(plan: RunPlan) -> str:
    """Run the plan's pipeline and publish its manifest, holding the output folder's lock
    (`OutputBusyError` when another run has it, unless `plan.wait_for_lock`); returns the
    manifest path."""
    with output_lock(plan.out_dir, wait=plan.wait_for_lock):
        return publish(plan, run_pipeline(plan))
