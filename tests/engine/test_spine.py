"""The spine end to end: recipe -> Beam ingest -> exact dedup -> shards + manifest.

These use the bundled demo corpus (real public-domain text), so they run on a fresh clone.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import demo_pool_rows
from thresher.cli import app
from thresher.load import load_hf, load_manifest, open_dataset, read_shard, shard_paths

# Whole recipes through the CLI / a real runner: end-to-end, so outside the fast loop.
pytestmark = pytest.mark.slow

def _pool_rows(n: int, offset: int = 0) -> list[dict]:
    return demo_pool_rows(n, offset)


def _write_recipe(tmp: Path, recipe: dict) -> Path:
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return p


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture()
def mixed_inputs(tmp_path: Path) -> dict:
    """Two JSONL files (one with malformed lines, invalid UTF-8) and one Parquet file."""
    rows = _pool_rows(900)
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows[:400]))
    b = tmp_path / "b.jsonl.gz"
    lines = [json.dumps(r).encode() for r in rows[400:700]]
    # 1-based line numbers of the planted bad records, and why each is bad.
    bad = {
        11: b'{"id": "x", "text": "unterminated',
        51: b'{"id": "y", "text": "caf\xe9 latin-1 bytes"}',
        101: b'{"id": "z", "body": "no text field"}',
        151: b'{"id": "w", "text": 42}',
        201: b'["not", "an", "object"]',
        251: b'{"id": "v", "text": "   \\u0007  "}',
    }
    for ln in sorted(bad):
        lines.insert(ln - 1, bad[ln])
    lines.append(json.dumps(rows[0]).encode())  # an exact duplicate of a.jsonl's first row
    with gzip.open(b, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    c = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "score": i * 0.5} for i, r in enumerate(rows[700:900])]), c,
                   row_group_size=64)
    recipe = {
        "name": "mixed",
        "seed": 7,
        "sources": [
            {"name": "jsonl", "paths": ["a.jsonl", "b.jsonl.gz"], "id_field": "id", "max_bad_fraction": 0.05},
            {"name": "parquet", "paths": ["c.parquet"], "id_field": "id"},
        ],
        "stages": [{"type": "exact_dedup"}],
        "output": {"dir": "out", "shard_max_rows": 150},
    }
    return {"dir": tmp_path, "recipe": recipe, "bad": bad}


def test_mixed_inputs_quarantine_and_counts(mixed_inputs):
    tmp = mixed_inputs["dir"]
    path = _write_recipe(tmp, mixed_inputs["recipe"])
    res = CliRunner().invoke(app, ["run", str(path), "--no-prefect"])
    assert res.exit_code == 0, res.output
    out = tmp / "out"
    m = load_manifest(str(out))

    # Every input row accounted for, per source.
    j, p = m["counts"]["by_source"]["jsonl"], m["counts"]["by_source"]["parquet"]
    assert j == {"read": 707, "quarantined": 6, "dropped": {"exact_dedup": {"duplicate": 1}},
                 "written": 700, "balanced": True}
    assert p == {"read": 200, "quarantined": 0, "dropped": {}, "written": 200, "balanced": True}
    assert m["num_rows"] == 900 and m["counts"]["balanced"]
    assert all(s["rows"] <= 150 for s in m["shards"])

    # One quarantine row per bad line, with its file, line number and reason.
    q = read_shard(str(out / "latest" / m["quarantine"][0]["path"])).to_pylist()
    got = {(Path(r["source_file"]).name, r["source_row"]): r["reason"] for r in q}
    assert set(got) == {("b.jsonl.gz", ln) for ln in mixed_inputs["bad"]}
    assert got[("b.jsonl.gz", 11)].startswith("invalid JSON")
    assert got[("b.jsonl.gz", 51)].startswith("invalid UTF-8")
    assert got[("b.jsonl.gz", 101)] == "missing text field 'text'"
    assert got[("b.jsonl.gz", 151)] == "text field 'text' is not a string (got int)"
    assert got[("b.jsonl.gz", 201)].startswith("not a JSON object")
    assert got[("b.jsonl.gz", 251)] == "empty text"
    raw = {r["source_row"]: r["raw"] for r in q}
    assert raw[51] == mixed_inputs["bad"][51]  # the bad bytes are kept exactly

    # The manifest describes inputs and shards truthfully.
    assert {Path(i["path"]).name for i in m["inputs"]} == {"a.jsonl", "b.jsonl.gz", "c.parquet"}
    for i in m["inputs"]:
        assert i["sha256"] == _sha(i["path"]) and i["size"] == os.path.getsize(i["path"])
    for s in m["shards"]:
        assert s["sha256"] == _sha(str(out / "latest" / s["path"]))
    names = [f["name"] for f in m["schema"]["fields"]]
    assert names[:5] == ["id", "text", "source", "source_file", "source_row"]
    assert "score" in names and "orig_source" in names  # source fields survive; the clash is renamed


def test_shards_load_in_datasets_pyarrow_and_torch(mixed_inputs):
    import datasets
    import torch

    tmp = mixed_inputs["dir"]
    path = _write_recipe(tmp, mixed_inputs["recipe"])
    assert CliRunner().invoke(app, ["run", str(path), "--no-prefect"]).exit_code == 0
    out = str(tmp / "out")
    files = shard_paths(out)

    ds = datasets.load_dataset("arrow", data_files=files, split="train")
    assert len(ds) == 900 and set(ds.column_names) >= {"id", "text", "source", "source_row"}
    one = datasets.Dataset.from_file(files[0])
    assert len(one) == load_manifest(out)["shards"][0]["rows"]
    assert load_hf(out)["id"] == ds["id"]  # the helper gives the same rows in shard order

    loader = torch.utils.data.DataLoader(ds.with_format("torch", columns=["source_row"]), batch_size=128)
    assert sum(len(b["source_row"]) for b in loader) == 900
    ids = ds["id"]
    assert len(set(ids)) == 900  # duplicates were removed; ids are unique


def test_pyarrow_dataset_over_both_ipc_formats(mixed_inputs):
    import datasets
    import pyarrow.dataset as pads

    tmp = mixed_inputs["dir"]
    recipe = mixed_inputs["recipe"]
    path = _write_recipe(tmp, recipe)
    assert CliRunner().invoke(app, ["run", str(path), "--no-prefect"]).exit_code == 0
    stream_out = str(tmp / "out")
    assert open_dataset(stream_out).count_rows() == 900  # zero-copy over stream shards

    r = dict(recipe, output=dict(recipe["output"], dir="out_file", ipc_format="file"))
    assert CliRunner().invoke(app, ["run", str(_write_recipe(tmp, r)), "--no-prefect"]).exit_code == 0
    files = shard_paths(str(tmp / "out_file"))
    assert pads.dataset(files, format="arrow").count_rows() == 900
    assert len(datasets.load_dataset("arrow", data_files=files, split="train")) == 900
    # Same rows, same order, whichever format.
    ids = open_dataset(stream_out).to_table().column("id")
    assert open_dataset(str(tmp / "out_file")).to_table().column("id") == ids


def test_same_recipe_gives_byte_identical_shards_any_parallelism(mixed_inputs):
    tmp = mixed_inputs["dir"]
    recipe = mixed_inputs["recipe"]
    digests = []
    # the local runner twice, then two dask worker processes (the local parallel path)
    for i, runner in enumerate([{}, {}, {"runner": "dask", "options": {"dask_workers": 2}}]):
        r = dict(recipe, output=dict(recipe["output"], dir=f"out{i}"), runner=runner)
        path = _write_recipe(tmp, r)
        res = CliRunner().invoke(app, ["run", str(path), "--no-prefect"])
        assert res.exit_code == 0, res.output
        m = load_manifest(str(tmp / f"out{i}"))
        digests.append([(s["path"], s["sha256"]) for s in m["shards"]])
    assert digests[0] == digests[1] == digests[2]

    # A different seed gives a different (still complete) order.
    r = dict(recipe, seed=8, output=dict(recipe["output"], dir="out_seed"))
    assert CliRunner().invoke(app, ["run", str(_write_recipe(tmp, r)), "--no-prefect"]).exit_code == 0
    m = load_manifest(str(tmp / "out_seed"))
    assert [s["sha256"] for s in m["shards"]] != [d for _, d in digests[0]]
    assert m["num_rows"] == 900


def test_sorted_order_and_shard_bounds(tmp_path):
    rows = _pool_rows(300)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"sources": [{"name": "a", "paths": ["a.jsonl"], "id_field": "id"}],
              "output": {"dir": "out", "order": "sorted", "sort_by": "id", "shard_max_rows": 64}}
    res = CliRunner().invoke(app, ["run", str(_write_recipe(tmp_path, recipe)), "--no-prefect"])
    assert res.exit_code == 0, res.output
    files = shard_paths(str(tmp_path / "out"))
    ids = [i for f in files for i in read_shard(f).column("id").to_pylist()]
    assert ids == sorted(r["id"] for r in rows)
    assert [read_shard(f).num_rows for f in files] == [64, 64, 64, 64, 44]


def test_exact_dedup_keeps_first_occurrence_and_records_dropped(tmp_path):
    rows = _pool_rows(50)
    # Source b repeats rows 0..9 (one of them re-spaced) and precedes nothing: a is first.
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dup = [dict(r, id=f"dup{i}") for i, r in enumerate(rows[:10])]
    dup[3]["text"] = "  " + dup[3]["text"].replace(" ", "   ") + " "
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dup))
    recipe = {"sources": [{"name": "a", "paths": ["a.jsonl"], "id_field": "id"},
                          {"name": "b", "paths": ["b.jsonl"], "id_field": "id"}],
              "stages": [{"type": "exact_dedup"}],
              "output": {"dir": "out", "write_dropped": True}}
    res = CliRunner().invoke(app, ["run", str(_write_recipe(tmp_path, recipe)), "--no-prefect"])
    assert res.exit_code == 0, res.output
    m = load_manifest(str(tmp_path / "out"))
    assert m["counts"]["by_source"]["b"]["dropped"] == {"exact_dedup": {"duplicate": 9}}
    dropped = read_shard(str(tmp_path / "out" / "latest" / m["dropped"][0]["path"]))
    pairs = dict(zip(dropped.column("id").to_pylist(), dropped.column("duplicate_of").to_pylist(), strict=True))
    assert pairs == {f"dup{i}": rows[i]["id"] for i in range(10) if i != 3}
    assert set(dropped.column("drop_reason").to_pylist()) == {"duplicate"}

    # With case/space folding the re-spaced copy is a duplicate too.
    recipe["stages"] = [{"type": "exact_dedup", "params": {"ignore_case_and_space": True}}]
    recipe["output"]["dir"] = "out2"
    assert CliRunner().invoke(app, ["run", str(_write_recipe(tmp_path, recipe)), "--no-prefect"]).exit_code == 0
    assert load_manifest(str(tmp_path / "out2"))["counts"]["by_source"]["b"]["written"] == 0


def test_too_many_bad_records_fail_the_run(tmp_path):
    rows = _pool_rows(20)
    lines = [json.dumps(r) for r in rows] + ["{broken"] * 5
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    recipe = {"sources": [{"name": "a", "paths": ["a.jsonl"]}], "output": {"dir": "out"}}
    res = CliRunner().invoke(app, ["run", str(_write_recipe(tmp_path, recipe)), "--no-prefect"])
    assert res.exit_code == 1
    assert "5 of 25 records (20.0%) were malformed" in res.output and "max_bad_fraction" in res.output
    assert not (tmp_path / "out" / "latest").exists()  # a failed run never becomes `latest`
    # Its unfinished snapshot keeps the quarantine for inspection (until the next run).
    assert list((tmp_path / "out" / "snapshots").glob("*/quarantine/part-00000-00000.arrow"))


def test_portable_runner_gives_the_same_shards(mixed_inputs):
    """The portable (job-server) path that Flink/Spark/Dataflow use, run in process."""
    tmp = mixed_inputs["dir"]
    recipe = mixed_inputs["recipe"]
    digests = []
    portable = {"runner": "PortableRunner", "options": {"job_endpoint": "embed", "environment_type": "LOOPBACK"}}
    for name, runner in (("local", {}), ("portable", portable)):
        r = dict(recipe, output=dict(recipe["output"], dir=name), runner=runner)
        res = CliRunner().invoke(app, ["run", str(_write_recipe(tmp, r)), "--no-prefect"])
        assert res.exit_code == 0, res.output
        m = load_manifest(str(tmp / name))
        assert m["counts"]["balanced"] and m["num_rows"] == 900
        digests.append([s["sha256"] for s in m["shards"]])
    assert digests[0] == digests[1]
    assert m["runner"] == "PortableRunner"
