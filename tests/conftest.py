"""Shared fixtures.

Real data lives in `../shared/data` beside the project root (CI and the dev machines have it;
a user's fresh clone may not): tests that need it skip with a reason saying so. Set
THRESHER_SHARED_DATA to point elsewhere.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "thresher" / "data" / "demo"
SHARED_DATA = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set THRESHER_SHARED_DATA); "
                    "it ships beside the project on CI and dev machines, not in the repo")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _hermetic_env(tmp_path_factory):
    """No network, no stray Prefect state: every test session gets its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def moto_endpoint():
    """One local S3 API (moto_server on loopback) for the whole session, stopped by its PID at
    the end; tests take `s3`, which empties it first and points the environment at it."""
    from thresher.testing.moto_server import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """The session's moto server, emptied of every earlier test's buckets, with AWS_ENDPOINT_URL,
    a dummy key and region set for this test (and the processes it starts)."""
    from thresher.testing.moto_server import aws_env, reset

    reset(moto_endpoint)
    for k, v in aws_env(moto_endpoint).items():
        monkeypatch.setenv(k, v)
    return moto_endpoint


@pytest.fixture(scope="session")
def big_corpus(tmp_path_factory) -> Path:
    """80,000 distinct rows in `part0..7.jsonl.gz` (the demo pool, 5 copies per file, each row's
    id and text suffixed `#f.c` / ` (f.c)`): the Beam part of a run over `part*.jsonl.gz` takes
    several seconds, time enough to kill or interrupt it. Read-only: tests write elsewhere."""
    d = tmp_path_factory.mktemp("big_corpus")
    base = demo_pool_rows()
    for f in range(8):
        with gzip.open(d / f"part{f}.jsonl.gz", "wt") as out:
            for c in range(5):
                for r in base:
                    out.write(json.dumps({"id": f"{r['id']}#{f}.{c}", "text": f"{r['text']} ({f}.{c})"}) + "\n")
    return d


def run_recipe(recipe: dict, base_dir: Path):
    """Validate a recipe mapping, run its Beam pipeline and publish the manifest (no Prefect).

    Returns the RunResult (counters, shards, reports, out_dir)."""
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.flows.publish import publish
    from thresher.recipe.load import validate_recipe

    plan = make_plan(validate_recipe(recipe, base_dir=str(base_dir)))
    result = run_pipeline(plan)
    publish(plan, result)
    return result


def demo_pool_rows(n: int | None = None, offset: int = 0) -> list[dict]:
    """Valid rows of the bundled demo pool (its broken lines and `:copy` duplicates skipped)."""
    out = []
    with gzip.open(DEMO_DATA / "pool_sample.jsonl.gz", "rb") as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "text" in r and not r["id"].endswith(":copy"):
                out.append(r)
    return out[offset: None if n is None else offset + n]
