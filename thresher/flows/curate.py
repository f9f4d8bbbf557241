"""The `curate` Prefect flow: plan -> run the Beam pipeline -> publish the manifest.

`thresher run` resolves the recipe into a `RunPlan` (so a bad recipe exits 2 before Prefect
starts) and hands it to this flow; a scheduled deployment passes only the recipe path and the
flow plans itself. With no Prefect server configured, Prefect starts a temporary local API
for the process (no set-up needed); point PREFECT_API_URL at a server to see runs in its UI.
`serve()` turns the flow into a scheduled deployment (cron or interval), which needs a real
server: schedules never fire on the temporary one.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task

from thresher.engine.build import run_pipeline
from thresher.engine.outdir import output_lock
from thresher.engine.plan import RunPlan, plan_recipe
from thresher.flows.publish import publish


@task(name="plan-run")
def plan_task(recipe_path: str, out: str | None, runner: str | None, overrides: dict[str, Any] | None) -> RunPlan:
    return plan_recipe(recipe_path, out, runner, overrides)


@task(name="run-beam-pipeline")
def run_beam(plan: RunPlan):
    log = get_run_logger()
    log.info("running %d source(s) through %d stage(s) into %s", len(plan.recipe.sources), len(plan.stages),
             plan.out_dir)
    run = run_pipeline(plan)
    log.info("pipeline finished in %.1f s: %d shard(s)", run.seconds, len(run.shards))
    return run


# Publishing touches only the local/remote filesystem; retries cover a flaky mount.
@task(name="publish-manifest", retries=3, retry_delay_seconds=2)
def publish_manifest(plan: RunPlan, run) -> str:
    path = publish(plan, run)
    get_run_logger().info("manifest written: %s", path)
    return path


@flow(name="thresher-curate", log_prints=True, validate_parameters=False)
def curate(recipe_path: str, out: str | None = None, runner: str | None = None,
           overrides: dict[str, Any] | None = None, plan: RunPlan | None = None) -> str:
    """Curate a corpus as the recipe says; returns the manifest path."""
    if plan is None:  # a deployment's run: only the recipe path comes in
        plan = plan_task(recipe_path, out, runner, overrides)
    get_run_logger().info("recipe %s is valid (sha256 %s): %d input file(s), %d stage(s) -> %s", recipe_path,
                          plan.recipe.hash()[:12], len(plan.inputs), len(plan.stages), plan.out_dir)
    # One run per output folder, from before it is prepared until the manifest is out; the
    # lock goes with this process (released on failure, and by the kernel on SIGKILL).
    with output_lock(plan.out_dir, wait=plan.wait_for_lock):
        run = run_beam(plan)
        return publish_manifest(plan, run)


def serve(recipe_path: str, cron: str | None = None, interval: float | None = None,
          out: str | None = None, name: str | None = None) -> None:
    """Serve `curate` for this recipe as a scheduled deployment (blocks)."""
    plan = plan_recipe(recipe_path, out, with_hashes=False)  # fail now, not at 3 a.m.
    params: dict[str, Any] = {"recipe_path": os.path.abspath(recipe_path)}
    if out:
        params["out"] = os.path.abspath(out)
    kwargs: dict[str, Any] = {"cron": cron} if cron else {"interval": interval}
    curate.serve(name=name or plan.recipe.name, parameters=params, **kwargs)
