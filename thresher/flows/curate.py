"""The `curate` Prefect flow: validate -> run the Beam pipeline -> publish the manifest.

`thresher run` calls this flow. With no Prefect server configured, Prefect starts a temporary
local API for the process (no set-up needed); point PREFECT_API_URL at a server to see runs
in its UI. `serve()` turns the flow into a scheduled deployment (cron or interval), which
needs a real server: schedules never fire on the temporary one.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task

from thresher.schemas.recipe import Recipe, load_recipe


@task(name="validate-recipe")
def validate(recipe_path: str, overrides: dict[str, Any] | None = None) -> Recipe:
    recipe = load_recipe(recipe_path, overrides)
    get_run_logger().info("recipe %s is valid (sha256 %s)", recipe_path, recipe.hash()[:12])
    return recipe


@task(name="run-beam-pipeline")
def run_beam(recipe: Recipe, runner: str | None = None):
    from thresher.pipelines.build import run_pipeline

    log = get_run_logger()
    log.info("running %d source(s) through %d stage(s) into %s", len(recipe.sources), len(recipe.stages), recipe.out_dir)
    run = run_pipeline(recipe, runner=runner)
    log.info("pipeline finished in %.1f s: %d shard(s)", run.seconds, len(run.shards))
    return run


# Publishing touches only the local/remote filesystem; retries cover a flaky mount.
@task(name="publish-manifest", retries=3, retry_delay_seconds=2)
def publish_manifest(recipe: Recipe, run) -> str:
    from thresher.flows.publish import publish

    path = publish(recipe, run)
    get_run_logger().info("manifest written: %s", path)
    return path


@flow(name="thresher-curate", log_prints=True)
def curate(recipe_path: str, out: str | None = None, runner: str | None = None,
           overrides: dict[str, Any] | None = None) -> str:
    """Curate a corpus as the recipe says; returns the manifest path."""
    recipe = validate(recipe_path, _with_out(overrides, out))
    run = run_beam(recipe, runner)
    return publish_manifest(recipe, run)


def run_without_prefect(recipe_path: str, out: str | None = None, runner: str | None = None,
                        overrides: dict[str, Any] | None = None) -> str:
    """The same three steps as `curate`, as plain calls (no Prefect API at all)."""
    from thresher.flows.publish import publish
    from thresher.pipelines.build import run_pipeline

    recipe = load_recipe(recipe_path, _with_out(overrides, out))
    return publish(recipe, run_pipeline(recipe, runner=runner))


def _with_out(overrides: dict[str, Any] | None, out: str | None) -> dict[str, Any]:
    merged = dict(overrides or {})
    if out:
        merged["output.dir"] = os.path.abspath(out)
    return merged


def serve(recipe_path: str, cron: str | None = None, interval: float | None = None,
          out: str | None = None, name: str | None = None) -> None:
    """Serve `curate` for this recipe as a scheduled deployment (blocks)."""
    recipe = load_recipe(recipe_path)  # fail now, not at 3 a.m.
    params: dict[str, Any] = {"recipe_path": os.path.abspath(recipe_path)}
    if out:
        params["out"] = os.path.abspath(out)
    kwargs: dict[str, Any] = {"cron": cron} if cron else {"interval": interval}
    curate.serve(name=name or recipe.name, parameters=params, **kwargs)
