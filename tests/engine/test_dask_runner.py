"""`runner: dask` (thresher.engine.dask_runner): whole recipes on a real dask.distributed cluster
(a scheduler and two worker processes on loopback) give the local runner's shards, byte for
byte, and its manifest counts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.conftest import DEMO_DATA, demo_pool_rows
from thresher.engine.dask_runner import ThresherDaskRunner
from thresher.engine.plan import resolve_runner
from thresher.load import load_manifest
from thresher.recipe.load import validate_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_dask_names_thresher_adapter():
    recipe = validate_recipe({"sources": [{"name": "a", "paths": ["a.jsonl"]}],
                              "runner": {"runner": "dask", "options": {"dask_workers": 2}}})
    assert resolve_runner(recipe) == ("thresher.engine.dask_runner.ThresherDaskRunner", {"dask_workers": 2})
    assert resolve_runner(recipe, "DaskRunner")[0] == "thresher.engine.dask_runner.ThresherDaskRunner"


def test_unsupported_transform_is_named_before_any_cluster_starts():
    from apache_beam.transforms.window import FixedWindows

    p = beam.Pipeline(options=PipelineOptions(flags=[]))
    _ = p | beam.Create([1, 2]) | "Minutes" >> beam.WindowInto(FixedWindows(60)) | beam.Map(str)
    with pytest.raises(NotImplementedError, match=r"^runner: dask cannot run Minutes: it windows its output; "):
        ThresherDaskRunner().run_pipeline(p, p.options)


# ---------------------------------------------------------------------------------------
# Whole recipes against a real cluster (`dask_address`: the session's, tests/engine/conftest.py)


def _run(recipe: dict, base: Path, out: Path):
    from tests.conftest import run_recipe

    recipe = {**recipe, "output": {**recipe.get("output", {}), "dir": str(out)}}
    result = run_recipe(recipe, base)
    return result, load_manifest(str(out))


def _same_outputs(recipe: dict, base: Path, tmp: Path, address: str) -> tuple:
    local, local_m = _run({**recipe, "runner": {"runner": "DirectRunner"}}, base, tmp / "local")
    dask_recipe = {**recipe, "runner": {"runner": "dask", "options": {"dask_client_address": address}}}
    remote, remote_m = _run(dask_recipe, base, tmp / "dask")
    assert remote_m["runner"] == "thresher.engine.dask_runner.ThresherDaskRunner"
    for kind in ("shards", "quarantine", "dropped"):
        assert [(s["path"], s["rows"], s["sha256"]) for s in getattr(remote, kind)] == \
               [(s["path"], s["rows"], s["sha256"]) for s in getattr(local, kind)], kind
    assert remote.counters == local.counters
    assert remote_m["counts"] == local_m["counts"] and remote_m["counts"]["balanced"]
    assert {k: v["dropped"] for k, v in remote_m["stages"].items()} == \
           {k: v["dropped"] for k, v in local_m["stages"].items()}
    assert remote.reports == local.reports
    return local, local_m


@pytest.mark.slow
def test_mixed_recipe_on_dask_matches_local_runner(dask_address, tmp_path):
    """Bad lines (quarantine), duplicates, a repeated id (renamed through a side input), two
    partitions and dropped rows written: every multi-output ParDo and side input in use, and
    every stage of the demo recipe (exact_dedup, decontaminate, ngram_features, DSIR)."""
    rows = demo_pool_rows(700)
    lines = [json.dumps(r) for r in rows[:500]]
    lines[10] = '{"id": "broken", "text": "unterminated'
    lines += [json.dumps(rows[3]), json.dumps({**rows[4], "text": rows[4]["text"] + " (edited)"})]
    (tmp_path / "pool.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    pq.write_table(pa.Table.from_pylist(rows[500:700]), tmp_path / "more.parquet", row_group_size=50)
    recipe = {
        "name": "mixed-dask", "seed": 3, "on_duplicate_id": "rename",
        "sources": [{"name": "pool", "paths": ["pool.jsonl.gz"], "id_field": "id", "max_bad_fraction": 0.1},
                    {"name": "more", "paths": ["more.parquet"], "id_field": "id"}],
        "stages": [
            {"type": "exact_dedup"},
            {"type": "decontaminate",
             "params": {"benchmarks": [{"preset": "gsm8k", "paths": [str(DEMO_DATA / "gsm8k_test.jsonl.gz")]}]}},
            {"type": "ngram_features", "params": {"num_buckets": 500}},
            {"type": "importance_resample",
             "params": {"target": [{"name": "math", "paths": [str(DEMO_DATA / "math_target.jsonl.gz")]}],
                        "k": 150, "num_buckets": 500}},
        ],
        "output": {"shard_max_rows": 40, "partitions": 2, "write_dropped": True},
    }
    _, manifest = _same_outputs(recipe, tmp_path, tmp_path, dask_address)
    counts = manifest["counts"]
    assert counts["total"]["read"] == 702 and counts["total"]["quarantined"] == 1
    assert counts["duplicate_ids"] == {"pool": 2, "more": 0}
    assert manifest["num_rows"] == 150 and manifest["stages"]["exact_dedup"]["dropped"] == {"duplicate": 1}
