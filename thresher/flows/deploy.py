"""Scheduled runs of the `curate` flow: `serve` (this process runs them) and `deploy` (a
deployment on a work pool whose workers run them).

Both register the flow by module path (`thresher.flows.curate.curate`), so whatever runs a
flow run imports it from the installed thresher package: no source upload, no image, and no
dependence on the directory it was deployed from. A process worker needs thresher installed
in its environment and the recipe (an absolute path in the deployment's parameters) readable
where it runs:

    prefect work-pool create curation --type process
    thresher deploy recipe.yaml --pool curation --cron "0 3 * * *" --timezone Europe/Berlin
    prefect worker start --pool curation

Schedules never fire on Prefect's temporary per-process server: both need a real server
(PREFECT_API_URL).
"""

from __future__ import annotations

import os
import zoneinfo
from typing import Any
from uuid import UUID

from thresher.core.errors import UserError
from thresher.io import fs


def check_timezone(name: str | None) -> str | None:
    """The IANA zone name unchanged, or ValueError naming it (Prefect would accept a typo and
    fail later, on the server)."""
    if name is None:
        return None
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as UTC, Europe/Berlin or "
                         "America/New_York") from None
    return name


def check_schedule(cron: str | None, interval: float | None, timezone: str | None, required: bool = True) -> None:
    """ValueError with one line when the schedule options cannot make a schedule: exactly one
    of `cron` / `interval` (none at all is fine unless `required`), a positive interval, a
    known zone. Cron syntax is Prefect's to judge (`make_schedule`): checking it here would
    import Prefect, which every command line mistake would then wait for."""
    check_timezone(timezone)
    if cron and interval is not None or required and not cron and interval is None:
        raise ValueError("give exactly one of --cron or --interval")
    if timezone and not cron and interval is None:
        raise ValueError("--timezone needs --cron or --interval")
    if interval is not None and interval <= 0:
        raise ValueError(f"--interval must be a positive number of seconds, got {interval:g}")


def make_schedule(cron: str | None = None, interval: float | None = None, timezone: str | None = None):
    """A Prefect schedule for exactly one of `cron` / `interval` (seconds), in `timezone` (cron
    fields are read in that zone; default UTC). ValueError with one line when invalid."""
    from prefect.schedules import Cron, Interval

    check_schedule(cron, interval, timezone)
    if interval is not None:
        return Interval(interval, timezone=timezone)
    try:
        return Cron(cron, timezone=timezone)
    except ValueError:
        raise ValueError(f"invalid cron schedule {cron!r}: five fields, e.g. \"0 3 * * *\" (03:00 daily)") from None


def deployment_parameters(recipe_path: str, out: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"recipe_path": os.path.abspath(recipe_path)}
    if out:
        params["out"] = fs.abspath(out)  # a URL stays a URL
    return params


def _to_deployment(recipe_path: str, out: str | None, name: str | None, schedule, **kwargs: Any):
    from prefect.deployments.runner import EntrypointType

    from thresher.engine.plan import plan_recipe
    from thresher.flows.curate import curate

    plan = plan_recipe(recipe_path, out, with_hashes=False)  # fail now, not at 3 a.m.
    return curate.to_deployment(name=name or plan.recipe.name, parameters=deployment_parameters(recipe_path, out),
                                schedule=schedule, entrypoint_type=EntrypointType.MODULE_PATH,
                                description=f"thresher: curate {os.path.abspath(recipe_path)}", **kwargs)


def serve(recipe_path: str, cron: str | None = None, interval: float | None = None, out: str | None = None,
          name: str | None = None, timezone: str | None = None) -> None:
    """Serve `curate` for this recipe as a scheduled deployment (blocks; runs happen here)."""
    from prefect import serve as prefect_serve

    schedule = make_schedule(cron, interval, timezone)
    # One run at a time: a second would only find the output folder locked and fail; late
    # runs (the machine was asleep) then go one after another, the later ones "up to date".
    prefect_serve(_to_deployment(recipe_path, out, name, schedule), limit=1)


def deploy(recipe_path: str, pool: str, cron: str | None = None, interval: float | None = None,
           out: str | None = None, name: str | None = None, timezone: str | None = None,
           work_queue: str | None = None) -> tuple[UUID, str]:
    """Register (or update) a deployment of `curate` for this recipe on work pool `pool`;
    returns its id and full name (`thresher-curate/NAME`). With neither `cron` nor `interval`
    it has no schedule (run it on demand: `prefect deployment run thresher-curate/NAME`)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    check_schedule(cron, interval, timezone, required=False)
    schedule = make_schedule(cron, interval, timezone) if (cron or interval is not None) else None
    import httpx

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise UserError(f"work pool {pool!r} not found on {client.api_url}: create it with "
                            f"`prefect work-pool create {pool} --type process`, then start a worker") from None
        except httpx.TransportError as exc:
            raise UserError(f"cannot reach the Prefect API at {client.api_url} ({exc}): is the server running, "
                            "and PREFECT_API_URL right?") from None
    deployment = _to_deployment(recipe_path, out, name, schedule, work_pool_name=pool, work_queue_name=work_queue)
    return deployment.apply(work_pool_name=pool), f"{deployment.flow_name}/{deployment.name}"
