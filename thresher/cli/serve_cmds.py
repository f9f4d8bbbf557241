"""`thresher serve` and `thresher deploy`: the curate flow on a schedule, run by this process
(`serve`) or by the workers of a Prefect work pool (`deploy`). Both need a real Prefect server
(PREFECT_API_URL); see `thresher.flows.deploy`."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.markup import escape

from thresher.cli.app import app, console, err_console, reported

_CRON_HELP = 'Cron schedule, e.g. "0 3 * * *" (read in --timezone).'
_OUT_HELP = "Output directory (overrides output.dir)."
_TZ_HELP = "IANA time zone of the schedule, e.g. Europe/Berlin (default UTC)."
_NO_SERVER = ("PREFECT_API_URL is not set: schedules do not fire on Prefect's temporary server. Start one with "
              "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")


def _schedule_or_exit(cron: Optional[str], interval: Optional[float], timezone: Optional[str],
                      required: bool, server_required: bool) -> None:
    """Exit 2 with one line when the options are invalid, before anything starts: the cheap
    checks first, then (it imports Prefect) the cron syntax."""
    from thresher.flows.deploy import check_schedule, make_schedule

    try:
        check_schedule(cron, interval, timezone, required)
        if not os.environ.get("PREFECT_API_URL"):
            if server_required:
                raise ValueError(_NO_SERVER)
            err_console.print(f"[yellow]warning:[/] {_NO_SERVER}")
        if cron:
            make_schedule(cron, interval, timezone)  # Prefect's own cron syntax check
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def serve(recipe: str = typer.Argument(..., help="Recipe YAML file."),
          cron: Optional[str] = typer.Option(None, help=_CRON_HELP),
          interval: Optional[float] = typer.Option(None, help="Or: run every N seconds."),
          timezone: Optional[str] = typer.Option(None, "--timezone", "--tz", help=_TZ_HELP),
          out: Optional[str] = typer.Option(None, "--out", "-o", help=_OUT_HELP),
          name: Optional[str] = typer.Option(None, help="Deployment name (default: recipe name).")) -> None:
    """Serve the curate flow for RECIPE as a scheduled Prefect deployment run by this process (blocks)."""
    _schedule_or_exit(cron, interval, timezone, required=True, server_required=False)
    with reported():
        from thresher.flows.deploy import serve as serve_flow

        serve_flow(recipe, cron=cron, interval=interval, out=out, name=name, timezone=timezone)


@app.command()
def deploy(recipe: str = typer.Argument(..., help="Recipe YAML file (readable where the workers run)."),
           pool: str = typer.Option(..., "--pool", help="Work pool whose workers run the flow "
                                    "(`prefect work-pool create NAME --type process`)."),
           cron: Optional[str] = typer.Option(None, help=_CRON_HELP),
           interval: Optional[float] = typer.Option(None, help="Or: run every N seconds."),
           timezone: Optional[str] = typer.Option(None, "--timezone", "--tz", help=_TZ_HELP),
           out: Optional[str] = typer.Option(None, "--out", "-o", help=_OUT_HELP),
           queue: Optional[str] = typer.Option(None, "--queue", help="Work queue in the pool (default: its default)."),
           name: Optional[str] = typer.Option(None, help="Deployment name (default: recipe name).")) -> None:
    """Register the curate flow for RECIPE as a deployment on a work pool; workers started with
    `prefect worker start --pool NAME` run it (on the schedule, or `prefect deployment run`).
    Without --cron/--interval it runs on demand only."""
    _schedule_or_exit(cron, interval, timezone, required=False, server_required=True)
    with reported():
        from thresher.flows.deploy import deploy as deploy_flow

        dep_id, full_name = deploy_flow(recipe, pool, cron=cron, interval=interval, out=out, name=name,
                                        timezone=timezone, work_queue=queue)
    console.print(f"deployed [bold]{escape(full_name)}[/] on pool "
                  f"{escape(pool)} (id {dep_id}); start a worker: prefect worker start --pool {escape(pool)}")

