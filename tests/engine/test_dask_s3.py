"""Issue 12's end-to-end check: a dask scheduler and 2 worker processes plus a local S3 API
(moto_server) on loopback; a recipe with exact dedup, DSIR and n-gram decontamination reads
`s3://` and writes `s3://` with `runner: dask`, and its shards are byte-identical to a local
DirectRunner run of the same inputs, with equal manifest counts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import DEMO_DATA

pytestmark = pytest.mark.slow


def _write_inputs(d: Path) -> None:
    """A pool with duplicates and a broken line, a Parquet source, a DSIR target, a benchmark."""
    with gzip.open(DEMO_DATA / "pool_sample.jsonl.gz", "rb") as fh:
        lines = fh.readlines()[:400]
    lines[9] = b'{"id": "broken", "text": "unterminated\n'  # one malformed record: quarantine
    lines.append(json.dumps({**json.loads(lines[0]), "id": "again"}).encode() + b"\n")  # a duplicate text
    (d / "pool.jsonl").write_bytes(b"".join(lines))
    pq.write_table(pq.read_table(DEMO_DATA / "math_sample.parquet").slice(0, 150), d / "math.parquet")
    with gzip.open(DEMO_DATA / "math_target.jsonl.gz", "rb") as fh:
        (d / "target.jsonl").write_bytes(b"".join(fh.readlines()[:300]))
    with gzip.open(DEMO_DATA / "gsm8k_test.jsonl.gz", "rb") as fh:
        (d / "gsm8k.jsonl.gz").write_bytes(gzip.compress(b"".join(fh.readlines()[:300]), mtime=0))


def _recipe(where: str, out: str, runner: dict) -> dict:
    return {
        "name": "dask-s3",
        "sources": [{"name": "pool", "paths": [f"{where}/pool.jsonl"], "max_bad_fraction": 0.5},
                    {"name": "math", "paths": [f"{where}/math.parquet"]}],
        "stages": [
            {"type": "exact_dedup"},
            {"type": "decontaminate",
             "params": {"benchmarks": [{"preset": "gsm8k", "paths": [f"{where}/gsm8k.jsonl.gz"]}]}},
            {"type": "importance_resample",
             "params": {"target": [{"name": "t", "paths": [f"{where}/target.jsonl"]}], "k": 120, "num_buckets": 1000}},
        ],
        # source_file names the file as the run read it (a local path here, a URL there)
        "output": {"dir": out, "drop_columns": ["source_file"], "shard_max_rows": 50},
        "runner": runner,
    }


def _run(recipe: dict, base: Path):
    from thresher.engine import outdir
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.flows.publish import publish
    from thresher.recipe.load import validate_recipe

    plan = make_plan(validate_recipe(recipe, base_dir=str(base)))
    with outdir.output_lock(plan.root_dir):
        run = run_pipeline(plan)
        publish(plan, run)
    return run


def test_s3_to_s3_on_dask_matches_a_local_run(tmp_path, monkeypatch, s3, dask_address):
    """`s3`: the session's moto server, emptied, with AWS_ENDPOINT_URL & co. set here; the
    session's cluster (`dask_address`, tests/engine/conftest.py) had them from its start."""
    from thresher import load
    from thresher.io import fs
    from thresher.testing.moto_server import make_bucket

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a remote output's row cache lives here
    data = tmp_path / "data"
    data.mkdir()
    _write_inputs(data)
    local = _run(_recipe(str(data), str(tmp_path / "out"), {"runner": "DirectRunner"}), tmp_path)
    local_manifest = load.load_manifest(str(tmp_path / "out"))
    make_bucket("corpus")
    for f in sorted(data.iterdir()):
        fs.write_bytes(f"s3://corpus/in/{f.name}", f.read_bytes())
    runner = {"runner": "dask", "options": {"dask_client_address": dask_address}}
    remote = _run(_recipe("s3://corpus/in", "s3://corpus/out", runner), tmp_path)
    manifest = load.load_manifest("s3://corpus/out")
    assert manifest["runner"] == "thresher.engine.dask_runner.ThresherDaskRunner"
    assert [(s["path"], s["rows"], s["sha256"]) for s in remote.shards] == \
           [(s["path"], s["rows"], s["sha256"]) for s in local.shards]
    assert len(remote.shards) == 3 and manifest["num_rows"] == 120
    assert remote.counters == local.counters
    assert manifest["counts"] == local_manifest["counts"] and manifest["counts"]["balanced"]
    assert manifest["counts"]["total"]["quarantined"] == local_manifest["counts"]["total"]["quarantined"] > 0
    assert {k: v["dropped"] for k, v in manifest["stages"].items()} == \
           {k: v["dropped"] for k, v in local_manifest["stages"].items()}
    assert manifest["stages"]["exact_dedup"]["dropped"]["duplicate"] > 0
    # What the manifest lists is there and hashes as it says.
    paths = load.shard_paths("s3://corpus/out", verify="sha256")
    assert paths == [f"{remote.out_dir}/{s['path']}" for s in remote.shards]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("s3:")]
