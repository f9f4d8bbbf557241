"""`thresher run` as the curate flow on Prefect's temporary per-process server (no server set
up). Against a real server (artifacts, logs, results, deployments, schedules):
test_prefect_native.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    p = subprocess.run([sys.executable, "-m", "thresher.cli", "run", str(recipe), "--prefect"], capture_output=True,
                       text=True, env=_env(tmp_path), timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    logs = p.stdout + p.stderr
    # One log line from each of the flow's three tasks, and the flow's final state.
    for line in ("is valid (sha256", "pipeline finished in", "manifest written:", "Finished in state Completed()"):
        assert line in logs, line
    m = load_manifest(str(tmp_path / "out"))
    assert m["num_rows"] == 310 and m["counts"]["balanced"]
    assert sum(r["rows"] for r in m["shards"]) == 310 and (tmp_path / "out" / "latest" / "shards").is_dir()
    assert (tmp_path / "prefect_home").exists()  # Prefect state stayed in the temp home
