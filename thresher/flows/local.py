"""The `curate` flow's steps as plain calls, without Prefect (`thresher run --no-prefect`)."""

from __future__ import annotations

from thresher.engine.build import run_pipeline
from thresher.engine.plan import RunPlan
from thresher.flows.publish import publish


def run_plan(plan: RunPlan) -> str:
    """Run the plan's pipeline and publish its manifest; returns the manifest path."""
    return publish(plan, run_pipeline(plan))
