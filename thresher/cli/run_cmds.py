"""`thresher run`, `validate` and `demo`.

A run is a Prefect flow run when there is Prefect to report to (`PREFECT_API_URL` set, or
`--prefect`); otherwise the same plan -> pipeline -> publish steps run in this process, with
no temporary Prefect server to start.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any, Optional

import typer
from rich.markup import escape

from thresher.cli.app import WAIT_HELP, app, console, parse_sets, reported, say, setup_logging
from thresher.cli.summary import print_summary
from thresher.io import fs

DEMO_OUT = "thresher-demo-out"
_PREFECT_HELP = ("Run as the Prefect `curate` flow (default: when PREFECT_API_URL is set); --no-prefect runs "
                 "the same steps in this process.")
_FORCE_HELP = "Run even when the latest snapshot already has this recipe's and inputs' fingerprint."


def use_prefect(flag: bool | None) -> bool:
    return flag if flag is not None else bool(os.environ.get("PREFECT_API_URL"))


def execute(recipe_path: str, out: str | None, runner: str | None, sets: dict[str, Any], prefect: bool,
            wait: bool = False, force: bool = False):
    """Plan (exit 2 on a bad recipe, before anything starts), then run; returns a `RunOutcome`."""
    from thresher.engine.plan import plan_recipe
    from thresher.flows.outcome import RunOutcome
    from thresher.signals import exit_on_signals

    with reported(), exit_on_signals(say):
        plan = plan_recipe(recipe_path, out, runner, sets)
        plan.wait_for_lock, plan.force = wait, force
        if prefect:
            from thresher.flows.curate import curate
            from thresher.signals import sigterm_stays_ours

            with sigterm_stays_ours():
                result = curate(recipe_path=os.path.abspath(recipe_path), out=out, runner=runner, overrides=sets,
                                plan=plan, force=force)
            return RunOutcome(**result)
        from thresher.flows.local import run_plan

        return run_plan(plan)


def show_outcome(outcome) -> None:
    if outcome.status == "up_to_date":
        console.print(f"[green]up to date[/]: snapshot {outcome.snapshot} already has this recipe's and inputs' "
                      f"fingerprint; nothing was run (--force to run anyway). {escape(outcome.snapshot_dir)}")
        return
    with reported():
        print_summary(outcome.snapshot_dir)
    latest = fs.join(outcome.out_dir, "LATEST" if fs.is_remote(outcome.out_dir) else "latest")  # no symlink on a store
    console.print(f"snapshot [bold]{outcome.snapshot}[/] is now {escape(latest)}")


@app.command()
def run(
    recipe: str = typer.Argument(..., help="Recipe YAML file."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (overrides output.dir)."),
    runner: Optional[str] = typer.Option(None, help="Beam runner (overrides runner.runner)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set output.shard_max_rows=5000 "
                                   "or, in a list, --set sources.0.max_bad_fraction=0.5"),
    prefect: Optional[bool] = typer.Option(None, "--prefect/--no-prefect", help=_PREFECT_HELP),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a recipe into a new snapshot: ingest, stages, shards, manifest; `latest` moves last."""
    setup_logging(verbose)
    show_outcome(execute(recipe, out, runner, parse_sets(set_), use_prefect(prefect), wait, force))


@app.command()
def validate(recipe: str = typer.Argument(..., help="Recipe YAML file."),
             set_: list[str] = typer.Option([], "--set", help="Override a recipe key, as `run --set` does."),
             check_inputs: bool = typer.Option(True, "--inputs/--no-inputs",
                                               help="Also check that the input files exist and parse, and run "
                                               "every stage's own checks (rewards, policies, benchmark files); "
                                               "--no-inputs checks the recipe's keys and params only.")) -> None:
    """Validate a recipe (and its inputs) without running anything. Exit 2 when invalid."""
    sets = parse_sets(set_)
    with reported():
        from thresher.engine.plan import plan_recipe
        from thresher.recipe.load import load_recipe

        if check_inputs:
            plan = plan_recipe(recipe, overrides=sets, with_hashes=False)
            r = plan.recipe
        else:
            r = load_recipe(recipe, sets)
    msg = f"[green]valid[/]: {len(r.sources)} source(s), {len(r.stages)} stage(s) -> {escape(r.out_dir)}"
    if check_inputs:
        msg += f"; {len(plan.inputs)} input file(s), {len(plan.tasks)} read task(s)"
    console.print(msg)


@app.command()
def demo(out: str = typer.Option(DEMO_OUT, "--out", "-o", help="Where to write the demo's output."),
         prefect: Optional[bool] = typer.Option(None, "--prefect/--no-prefect", help=_PREFECT_HELP),
         force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
         wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the bundled demo recipe on the bundled sample corpus (CPU, no server, no network)."""
    setup_logging(verbose)
    recipe = str(resources.files("thresher") / "recipes" / "demo.yaml")
    console.print(f"[bold]thresher demo[/]: recipe {recipe}\n")
    show_outcome(execute(recipe, out, None, {}, use_prefect(prefect), wait, force))
    console.print(f"\nInspect again with: [bold]thresher inspect {out}[/]")
