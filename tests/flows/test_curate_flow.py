"""The Prefect side: `thresher run` as the curate flow, and a scheduled deployment firing
against a real Prefect server on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from thresher.load import load_manifest

# Whole recipes through the CLI / a real runner: end-to-end, so outside the fast loop.
pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "thresher" / "data" / "demo"


def _recipe(tmp: Path, out: str) -> Path:
    shutil.copy(DEMO / "math_sample.parquet", tmp / "math.parquet")
    r = {"name": "flowtest", "sources": [{"name": "math", "paths": ["math.parquet"], "id_field": "id"}],
         "stages": [{"type": "exact_dedup"}], "output": {"dir": out}}
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _env(tmp: Path, **extra: str) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect_home"), PYTHONUNBUFFERED="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def test_cli_run_goes_through_the_prefect_flow(tmp_path):
    recipe = _recipe(tmp_path, "out")
    p = subprocess.run([sys.executable, "-m", "thresher.cli", "run", str(recipe)], capture_output=True,
                       text=True, env=_env(tmp_path), timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    logs = p.stdout + p.stderr
    # One log line from each of the flow's three tasks, and the flow's final state.
    for line in ("is valid (sha256", "pipeline finished in", "manifest written:", "Finished in state Completed()"):
        assert line in logs, line
    m = load_manifest(str(tmp_path / "out"))
    assert m["num_rows"] == 310 and m["counts"]["balanced"]
    assert (tmp_path / "prefect_home").exists()  # Prefect state stayed in the temp home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited early: {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("prefect server did not become healthy in time")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.server
def test_served_deployment_runs_on_schedule(tmp_path):
    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable))
    assert prefect, "the prefect CLI is installed with thresher"
    recipe = _recipe(tmp_path, "out")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, PREFECT_API_URL=api)
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    served = None
    try:
        _wait_healthy(api, server, timeout=180)
        served = subprocess.Popen([sys.executable, "-m", "thresher.cli", "serve", str(recipe), "--interval", "5",
                                   "--out", str(tmp_path / "scheduled")], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        manifest = tmp_path / "scheduled" / "manifest.json"
        deadline = time.time() + 300
        while time.time() < deadline and not manifest.exists():
            assert served.poll() is None, served.stdout.read()[-3000:]
            time.sleep(1)
        assert manifest.exists(), "no scheduled run completed within 5 minutes"
        m = load_manifest(str(tmp_path / "scheduled"))
        assert m["num_rows"] == 310 and len(m["shards"]) >= 1
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
