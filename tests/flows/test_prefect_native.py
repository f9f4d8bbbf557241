"""Prefect-native runs against a real `prefect server` on loopback, queried through the Prefect
client: each flow run's artifacts (rows per source, a report per stage, links), thresher's log
lines in the run's logs, a persisted result read back, an unchanged rerun "up to date", a
deployment on a work pool, a schedule in a time zone. One server for the module.

The schedule options' validation (exit 2, one line) runs without a server, in the fast loop."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from thresher.cli import app

ALPHA = ['{"id": "a1", "text": "hello world one"}', '{"id": "a2", "text": "hello world two"}',
         '{"id": "a3", "text": "hello world one"}', "not json at all", '{"id": "a4", "text": "something else"}']
BETA = ['{"id": "b1", "text": "bee text"}', '{"id": "b2", "text": "more bee text"}', '{"id": "b3", "text": "bee text"}']
# Duplicates only within a source, so the counts do not depend on which copy dedup keeps.
ROWS = [
    {"source": "alpha", "read": 5, "quarantined": 1, "dropped exact_dedup: duplicate": 1, "written": 3,
     "adds up": "yes"},
    {"source": "beta", "read": 3, "quarantined": 0, "dropped exact_dedup: duplicate": 1, "written": 2,
     "adds up": "yes"},
    {"source": "total", "read": 8, "quarantined": 1, "dropped exact_dedup: duplicate": 2, "written": 5,
     "adds up": "yes"},
]


def write_recipe(tmp: Path, name: str = "nativetest") -> Path:
    (tmp / "a.jsonl").write_text("\n".join(ALPHA) + "\n")
    (tmp / "b.jsonl").write_text("\n".join(BETA) + "\n")
    r = {"name": name,
         "sources": [{"name": "alpha", "paths": ["a.jsonl"], "id_field": "id", "max_bad_fraction": 0.5},
                     {"name": "beta", "paths": ["b.jsonl"], "id_field": "id"}],
         "stages": [{"type": "exact_dedup"}], "output": {"dir": "out"}}
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


# --- fast: the schedule options fail before anything starts (and before Prefect is imported) ---

@pytest.fixture()
def recipe(tmp_path) -> Path:
    return write_recipe(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["serve", "{r}", "--cron", "0 3 * * *", "--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["serve", "{r}", "--cron", "0 3 * * *", "--interval", "60"], "give exactly one of --cron or --interval"),
    (["serve", "{r}"], "give exactly one of --cron or --interval"),
    (["serve", "{r}", "--interval", "0"], "--interval must be a positive number of seconds"),
    (["deploy", "{r}", "--pool", "p", "--timezone", "Europe/Berlin"], "--timezone needs --cron or --interval"),
    (["deploy", "{r}", "--pool", "p", "--cron", "0 3 * * *", "--tz", "Europe/Nowhere"],
     "unknown time zone 'Europe/Nowhere'"),
])
def test_bad_schedule_options_exit_2_with_one_line(recipe, args, message, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached: it fails before
    res = CliRunner().invoke(app, [a.replace("{r}", str(recipe)) for a in args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output


def test_deploy_without_a_server_exits_2(recipe, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    res = CliRunner().invoke(app, ["deploy", str(recipe), "--pool", "p", "--cron", "0 3 * * *"])
    assert res.exit_code == 2 and "PREFECT_API_URL is not set" in res.output, res.output


# --- against a real server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from thresher.testing.prefect_server import PrefectServer

    with PrefectServer(tmp_path_factory.mktemp("prefect_server")) as srv:
        with temporary_settings(updates={PREFECT_API_URL: srv.api_url}):  # this process's client too
            yield srv


def _cli(srv, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "thresher.cli", *args], capture_output=True, text=True,
                       env=srv.env(PYTHONUNBUFFERED="1"), timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def _runs_of(client, flow_name: str = "thresher-curate"):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                 sort=FlowRunSort.START_TIME_ASC)


def _artifacts(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    by_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    arts = client.read_artifacts(artifact_filter=by_run)
    return {a.key: a for a in arts if a.key}  # the unkeyed one is the persisted result's record


def _logs(client, flow_run_id, want: str, timeout: float = 20) -> list:
    """The run's logs once one contains `want` (records reach the API in batches)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if any(want in log.message for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.server
def test_flow_run_has_artifacts_logs_and_a_readable_result(server, tmp_path):
    from prefect import get_client

    from thresher.flows.curate import curate

    recipe = write_recipe(tmp_path)
    _cli(server, "run", str(recipe))  # PREFECT_API_URL is set: the run is a flow run on the server
    with get_client(sync_client=True) as client:
        (run,) = _runs_of(client)
        assert run.state.is_completed()
        outcome = run.state.result()  # persisted as JSON, read back from another process
        snapshot = outcome["snapshot"]
        snap_dir = tmp_path / "out" / "snapshots" / snapshot
        assert outcome == {"status": "written", "out_dir": str(tmp_path / "out"), "snapshot": snapshot,
                           "manifest": str(snap_dir / "manifest.json"),
                           "counts": {"read": 8, "quarantined": 1, "written": 5, "dropped": 2},
                           "seconds": outcome["seconds"]}
        assert os.path.realpath(tmp_path / "out" / "latest") == str(snap_dir)

        arts = _artifacts(client, run.id)
        # report.html is linked when the snapshot has one (thresher.report writes it).
        html = ["nativetest-report"] if (snap_dir / "report.html").is_file() else []
        assert sorted(arts) == sorted(["nativetest-manifest", "nativetest-rows", "nativetest-stage-exact-dedup",
                                       "nativetest-summary", *html])
        if html:
            assert f"({(snap_dir / 'report.html').as_uri()})" in arts["nativetest-report"].data
        assert arts["nativetest-rows"].type == "table"
        assert json.loads(arts["nativetest-rows"].data) == ROWS
        stage = arts["nativetest-stage-exact-dedup"]
        assert stage.type == "markdown" and "| 7 | 2 | duplicate |" in stage.data and snapshot in stage.data
        assert f"({(snap_dir / 'manifest.json').as_uri()})" in arts["nativetest-manifest"].data
        assert "8 read, 1 quarantined, 2 dropped, 5 written" in arts["nativetest-summary"].data

        logs = _logs(client, run.id, "writing snapshot")
        by_name = {}
        for log in logs:
            by_name.setdefault(log.name, []).append(log.message)
        assert f"writing snapshot {snap_dir}" in by_name["thresher.build"]
        assert "read " + str(tmp_path / "a.jsonl") + ": 5 records, 4 rows, 1 quarantined" in by_name["thresher.ingest"]
        assert any(m.startswith("manifest written:") for m in by_name["prefect.task_runs"])

        # Unchanged recipe and inputs, run in this process as a deployment would (recipe path only).
        state = curate(recipe_path=str(recipe), return_state=True)
        again = client.read_flow_run(state.state_details.flow_run_id)
        assert again.state.result() == dict(outcome, status="up_to_date")
        arts = _artifacts(client, again.id)
        assert sorted(arts) == sorted(["nativetest-manifest", "nativetest-summary", *html])
        assert f"**Up to date**: snapshot `{snapshot}`" in arts["nativetest-summary"].data
        logs = _logs(client, again.id, "up to date: snapshot")
        assert [m.message for m in logs if m.name == "thresher.run"] == [
            f"up to date: snapshot {snapshot} has this recipe's and inputs' fingerprint (use --force to rerun)"]
        assert len(os.listdir(tmp_path / "out" / "snapshots")) == 1


@pytest.mark.slow
@pytest.mark.server
def test_thresher_logs_from_threads_without_a_run_context_reach_the_flow_run(server):
    from prefect import flow, get_client

    from thresher.flows.curate import thresher_logs_to_run

    @flow(name="thresher-log-probe")
    def probe() -> None:
        with thresher_logs_to_run():
            worker = threading.Thread(target=logging.getLogger("thresher.probe").info, args=("from a worker thread",))
            worker.start()
            worker.join()
            logging.getLogger("thresher.probe").debug("below INFO: not sent")
        logging.getLogger("thresher.probe").warning("after the block: not this run's")

    state = probe(return_state=True)
    with get_client(sync_client=True) as client:
        logs = _logs(client, state.state_details.flow_run_id, "from a worker thread")
    mine = [(log.name, log.message, log.task_run_id) for log in logs if log.name.startswith("thresher")]
    assert mine == [("thresher.probe", "from a worker thread", None)]


@pytest.mark.slow
@pytest.mark.server
def test_deploy_puts_the_flow_on_a_work_pool(server, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flows import load_flow_from_entrypoint
    from prefect.workers.process import ProcessWorker

    recipe = write_recipe(tmp_path, name="deployed")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="curation", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
    p = _cli(server, "deploy", str(recipe), "--pool", "curation", "--cron", "30 2 * * *", "--timezone",
             "Europe/Berlin", "--out", str(tmp_path / "nightly"))
    assert "deployed thresher-curate/deployed on pool curation" in " ".join(p.stdout.split())
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("thresher-curate/deployed")
    assert dep.work_pool_name == "curation"
    assert dep.entrypoint == "thresher.flows.curate.curate"
    assert dep.parameters == {"recipe_path": str(recipe), "out": str(tmp_path / "nightly")}
    (sched,) = dep.schedules
    assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("30 2 * * *", "Europe/Berlin", True)
    # What a process worker does with that entrypoint: import the flow from the installed package.
    assert load_flow_from_entrypoint(dep.entrypoint).name == "thresher-curate"

    # Cron syntax is Prefect's to judge: still one line and exit 2, before anything is registered.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_API_URL", server.api_url)
        res = CliRunner().invoke(app, ["deploy", str(recipe), "--pool", "curation", "--cron", "every night"])
    assert res.exit_code == 2 and "invalid cron schedule 'every night'" in res.output, res.output
    bad = subprocess.run([sys.executable, "-m", "thresher.cli", "deploy", str(recipe), "--pool", "nope"],
                         capture_output=True, text=True, env=server.env(), timeout=120)
    assert bad.returncode == 1
    assert "work pool 'nope' not found" in bad.stderr and "prefect work-pool create nope" in bad.stderr


@pytest.mark.slow
@pytest.mark.server
def test_served_deployment_runs_on_schedule_in_its_time_zone(server, tmp_path):
    from prefect import get_client

    from thresher.load import load_manifest
    from thresher.testing.prefect_server import stop_group

    recipe = write_recipe(tmp_path, name="served")
    out = tmp_path / "scheduled"
    # The first run is due one interval after serving starts; `serve` runs one at a time, so on a
    # slow machine later ones wait (and find the snapshot up to date) instead of piling up.
    served = subprocess.Popen([sys.executable, "-m", "thresher.cli", "serve", str(recipe), "--interval", "10",
                               "--timezone", "America/New_York", "--out", str(out)], env=server.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out / "latest" / "manifest.json").exists():
            assert served.poll() is None, served.stdout.read()[-3000:]
            time.sleep(0.5)
        if not (out / "latest" / "manifest.json").exists():
            stop_group(served)
            pytest.fail("no scheduled run completed within 5 minutes: " + served.stdout.read()[-3000:])
        assert load_manifest(str(out))["counts"]["total"] == {"read": 8, "quarantined": 1, "written": 5,
                                                               "dropped": 2}
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("thresher-curate/served")
        (sched,) = dep.schedules
        assert sched.schedule.timezone == "America/New_York"
        assert sched.schedule.interval.total_seconds() == 10
    finally:
        stop_group(served)
