"""Object storage wherever a path goes (`thresher.io.fs`).

Fast: `fs` on local paths and on fsspec's in-process `memory://` store (the same code path as
s3:// without a server): the readers, snapshot publication without rename, the lock object,
the errors for an unknown scheme or a missing extra. Slow: a whole recipe (exact dedup, DSIR,
n-gram decontamination) from s3:// to s3:// on a local moto server, compared with a local run.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.core.errors import RecipeError
from thresher.engine import outdir, snapshots
from thresher.io import fs
from thresher.io.ingest import plan_reads, read_task
from thresher.recipe.load import validate_recipe

DEMO = Path(__file__).resolve().parents[2] / "thresher" / "data" / "demo"


@pytest.fixture
def mem():
    """A fresh `memory://` prefix (the memory store is one per process)."""
    import uuid

    root = f"memory://t{uuid.uuid4().hex[:8]}"
    yield root
    fs.remove(root, recursive=True)


# ---------------------------------------------------------------------------------------
# fs itself


def test_fs_local_paths(tmp_path):
    d = str(tmp_path)
    assert not fs.is_remote(d) and fs.is_remote("s3://b/k") and not fs.is_remote(f"file://{d}")
    assert fs.join("s3://b/out/", "snapshots", "x") == "s3://b/out/snapshots/x"
    assert fs.join(d, "a", "b") == os.path.join(d, "a", "b")
    assert fs.abspath("s3://b//k") == "s3://b//k" and fs.abspath("rel") == os.path.abspath("rel")
    p = fs.join(d, "sub", "f.bin")
    digest = fs.write_bytes(p, b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" == fs.sha256(p)
    assert fs.read_bytes(p) == b"hello" and fs.size(p) == 5 and fs.isfile(p) and fs.isdir(fs.join(d, "sub"))
    assert os.listdir(tmp_path / "sub") == ["f.bin"]  # no temp file left behind
    fs.write_bytes(fs.join(d, "sub", "g.txt"), b"")
    assert fs.glob(fs.join(d, "**", "*.*")) == [p, fs.join(d, "sub", "g.txt")]
    assert fs.listdir(fs.join(d, "sub")) == ["f.bin", "g.txt"] and fs.listdir(fs.join(d, "none")) == []
    assert fs.create_exclusive(fs.join(d, "lock"), b"1") and not fs.create_exclusive(fs.join(d, "lock"), b"2")
    assert fs.read_bytes(fs.join(d, "lock")) == b"1"
    fs.remove(fs.join(d, "sub"), recursive=True)
    fs.remove(fs.join(d, "missing"))
    assert not fs.exists(fs.join(d, "sub"))


def test_fs_remote_store(mem):
    assert fs.write_bytes(f"{mem}/out/a/x.json", b"{}") == fs.sha256(f"{mem}/out/a/x.json")
    fs.write_bytes(f"{mem}/out/b.json", b"[1]")
    assert fs.glob(f"{mem}/out/**/*.json") == [f"{mem}/out/a/x.json", f"{mem}/out/b.json"]
    assert fs.listdir(f"{mem}/out") == ["a", "b.json"] and fs.listdir(f"{mem}/nothing") == []
    assert fs.isdir(f"{mem}/out/a") and fs.isfile(f"{mem}/out/b.json") and fs.size(f"{mem}/out/b.json") == 3
    fs.makedirs(f"{mem}/empty")  # a no-op: prefixes need no folder
    assert not fs.exists(f"{mem}/empty")
    assert fs.create_exclusive(f"{mem}/lock", b"me") and not fs.create_exclusive(f"{mem}/lock", b"you")
    with fs.open(f"{mem}/out/b.json", "r") as fh:
        assert fh.read() == "[1]"

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        fs.write_atomic(f"{mem}/out/c.bin", boom)
    assert not fs.exists(f"{mem}/out/c.bin")  # never a partial object under the final name
    fs.remove(f"{mem}/out", recursive=True)
    assert fs.walk_files(mem) == [f"{mem}/lock"]


def test_unknown_scheme_and_missing_extra(monkeypatch, tmp_path):
    with pytest.raises(RecipeError) as exc:
        fs.exists("ftp://host/x")
    assert exc.value.problems == ["ftp://host/x: unknown storage scheme ftp://; thresher reads and writes local "
                                  "paths, s3://, gs:// and hf:// (read-only)"]
    assert fs.scheme_problem("hf://datasets/o/r", write=True) == (
        "hf://datasets/o/r: hf:// is read-only in thresher; write to a local folder, s3:// or gs://")
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if the `gcs` extra were not installed
    monkeypatch.setattr(fs, "_cache", {})
    assert fs.scheme_problem("gs://b/out") == ("gs://b/out: gs:// needs the gcsfs package, not installed here; "
                                               "pip install 'thresher[gcs]'")
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    from thresher.engine.plan import make_plan

    recipe = validate_recipe({"sources": [{"name": "a", "paths": ["a.jsonl", "gs://b/in/*.jsonl"]}],
                              "output": {"dir": "gs://b/out"}, "cache": {"dir": "s3://b/cache"}}, str(tmp_path))
    with pytest.raises(RecipeError) as exc:
        make_plan(recipe)
    assert exc.value.problems == [
        "gs://b/in/*.jsonl: gs:// needs the gcsfs package, not installed here; pip install 'thresher[gcs]'",
        "output.dir: gs://b/out: gs:// needs the gcsfs package, not installed here; pip install 'thresher[gcs]'",
        "cache.dir: s3://b/cache is object storage; the row cache (SQLite) needs a local folder: give a local "
        "path, or leave it unset (a remote output caches under ~/.cache/thresher)",
    ]


def test_remote_output_caches_rows_locally(monkeypatch, tmp_path):
    from thresher.engine.plan import cache_dir_of

    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = validate_recipe({"sources": [{"name": "a", "paths": ["a.jsonl"]}], "output": {"dir": "s3://b/o"}})
    one, two = cache_dir_of(recipe, "s3://b/o"), cache_dir_of(recipe, "s3://b/o2")
    assert one.startswith(str(tmp_path / ".cache" / "thresher" / "row-cache") + "/") and one != two
    assert recipe.resolve("s3://b/o") == "s3://b/o" and recipe.out_dir == "s3://b/o"


# ---------------------------------------------------------------------------------------
# Readers and the recipe's paths on a store


def test_readers_read_a_store_like_local_files(tmp_path, mem, qa_files_no_hf):
    names = qa_files_no_hf
    for f in tmp_path.iterdir():
        if f.is_file():
            fs.write_bytes(f"{mem}/in/{f.name}", f.read_bytes())
    for name, fname in names.items():
        if not (tmp_path / fname).is_file():
            continue
        src = {"name": name, "text_field": "question"}
        local = validate_recipe({"sources": [{**src, "paths": [fname]}], "output": {"dir": "o"}}, str(tmp_path))
        remote = validate_recipe({"sources": [{**src, "paths": [f"{mem}/in/{fname[:3]}*{fname[3:]}"]}],
                                  "output": {"dir": "o"}}, str(tmp_path))
        got = []
        for recipe in (local, remote):
            tasks, inputs = plan_reads(recipe)
            assert [x.path for x in inputs] == [recipe.resolve(recipe.sources[0].paths[0]).replace("*", "")]
            rows = [b.drop_columns(["source_file"]).to_pylist() for t in tasks
                    for b, _ in read_task(t, 64) if b is not None]
            got.append((rows, [(x.size, x.sha256) for x in inputs]))
        assert got[0] == got[1] and len(got[0][0][0]) == 3, name


def test_missing_remote_source_is_a_recipe_problem(mem):
    recipe = validate_recipe({"sources": [{"name": "a", "paths": [f"{mem}/nope.jsonl", f"{mem}/in/*.jsonl"]}],
                              "output": {"dir": "o"}})
    with pytest.raises(RecipeError) as exc:
        plan_reads(recipe)
    assert exc.value.problems == [f"sources.a.paths: file not found: {mem}/nope.jsonl",
                                  f"sources.a.paths: no file matches '{mem}/in/*.jsonl' ({mem}/in/*.jsonl)"]


# ---------------------------------------------------------------------------------------
# Publication without rename, and the lock object


def test_snapshots_on_a_store(mem):
    root = f"{mem}/out"
    sids = []
    for n in range(3):
        sid = snapshots.new_snapshot_id(root)
        path = snapshots.begin(root, sid)
        assert fs.isfile(f"{path}/{snapshots.MARKER}")
        assert snapshots.latest_id(root) == (sids[-1] if sids else None)  # the pointer moves last
        fs.write_bytes(f"{path}/shards/part-00000-00000.arrow", b"rows")
        fs.write_bytes(f"{path}/manifest.json", json.dumps({"files": ["shards/part-00000-00000.arrow"]}).encode())
        snapshots.point_latest(root, sid)
        sids.append(sid)
        assert len(set(sids)) == n + 1
    assert fs.read_text(f"{root}/LATEST") == f"snapshots/{sids[-1]}\n"
    assert not fs.exists(f"{root}/latest")  # no symlink on a store
    assert snapshots.resolve(root) == f"{root}/snapshots/{sids[-1]}"
    unfinished = snapshots.begin(root, "29991231T000000Z")  # a run that died before its manifest
    fs.write_bytes(f"{unfinished}/shards/part-00000-00000.arrow", b"partial run")
    fs.write_bytes(f"{root}/snapshots/{sids[0]}/notes.txt", b"a user's file")
    assert [(s.id, s.complete, s.latest) for s in snapshots.list_snapshots(root)] == [
        (sids[0], True, False), (sids[1], True, False), (sids[2], True, True), ("29991231T000000Z", False, False)]
    assert snapshots.resolve(root) == f"{root}/snapshots/{sids[-1]}"  # readers ignore the unfinished one
    assert snapshots.prune(root, keep=1) == [sids[1], "29991231T000000Z"]  # sids[0] keeps the user's file
    assert fs.walk_files(root) == sorted([f"{root}/LATEST", f"{root}/snapshots/{sids[0]}/notes.txt",
                                          f"{root}/snapshots/{sids[2]}/.thresher-snapshot",
                                          f"{root}/snapshots/{sids[2]}/manifest.json",
                                          f"{root}/snapshots/{sids[2]}/shards/part-00000-00000.arrow"])
    with pytest.raises(FileExistsError):
        snapshots.begin(root, sids[2])


def test_lock_object(mem):
    out = f"{mem}/out"
    with outdir.output_lock(out):
        held = json.loads(fs.read_bytes(f"{out}/.thresher.lock"))
        assert held["pid"] == os.getpid()
        with pytest.raises(outdir.OutputBusyError) as exc:
            with outdir.output_lock(out):
                pass
        assert f"pid {os.getpid()}" in str(exc.value) and f"delete {out}/.thresher.lock" in str(exc.value)
    assert not fs.exists(f"{out}/.thresher.lock")
    with outdir.output_lock(out):  # free again
        pass


def test_overlap_on_a_store():
    recipe = validate_recipe({"sources": [{"name": "a", "paths": ["s3://b/data/**/*.jsonl"]}], "output": {"dir": "o"}})
    assert outdir.overlap_problems(recipe, "s3://b/data/out") == [
        "output.dir: s3://b/data/out overlaps input s3://b/data/**/*.jsonl of source a; choose an output folder "
        "outside the inputs"]
    assert outdir.overlap_problems(recipe, "s3://b/out") == []
    assert outdir.overlap_problems(recipe, "/b/data/out") == []


# ---------------------------------------------------------------------------------------
# End to end on a local S3 API


def _inputs(d: Path) -> None:
    """Small inputs cut from the demo data: a pool with duplicates and broken lines, a Parquet
    source, a DSIR target and a gsm8k benchmark."""
    with gzip.open(DEMO / "pool_sample.jsonl.gz", "rb") as fh:
        lines = fh.readlines()[:400]
    copies = [json.dumps({**r, "id": r["id"] + ":again"}).encode() + b"\n" for r in map(json.loads, lines[:3])]
    (d / "pool.jsonl").write_bytes(b"".join(lines + copies) + b'{"id": "broken", "text": \n')
    pq.write_table(pq.read_table(DEMO / "math_sample.parquet").slice(0, 150), d / "math.parquet")
    with gzip.open(DEMO / "math_target.jsonl.gz", "rb") as fh:
        (d / "target.jsonl").write_bytes(b"".join(fh.readlines()[:300]))
    with gzip.open(DEMO / "gsm8k_test.jsonl.gz", "rb") as fh:
        (d / "gsm8k.jsonl.gz").write_bytes(gzip.compress(b"".join(fh.readlines()[:300]), mtime=0))


def _recipe(where: str, out: str) -> dict:
    return {
        "name": "object-storage",
        "sources": [{"name": "pool", "paths": [f"{where}/pool.jsonl"], "max_bad_fraction": 0.5},
                    {"name": "math", "paths": [f"{where}/*.parquet"]}],
        "stages": [
            {"type": "exact_dedup"},
            {"type": "decontaminate",
             "params": {"benchmarks": [{"preset": "gsm8k", "paths": [f"{where}/gsm8k.jsonl.gz"]}]}},
            {"type": "importance_resample", "params": {"target": [{"name": "t", "paths": [f"{where}/target.jsonl"]}],
                                                       "k": 120, "num_buckets": 1000}},
        ],
        # source_file names the file as the run read it (a path here, a URL there): not compared
        "output": {"dir": out, "drop_columns": ["source_file"]},
    }


def _run(recipe: dict, base: Path):
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.flows.publish import publish

    plan = make_plan(validate_recipe(recipe, base_dir=str(base)))
    with outdir.output_lock(plan.root_dir):
        run = run_pipeline(plan)
        publish(plan, run)
    return plan, run


@pytest.mark.slow
def test_s3_to_s3_matches_a_local_run(tmp_path, monkeypatch, s3):
    from thresher import load
    from thresher.testing.moto_server import make_bucket

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the remote output's row cache goes here
    data = tmp_path / "data"
    data.mkdir()
    _inputs(data)
    _, local = _run(_recipe(str(data), str(tmp_path / "out")), tmp_path)
    local_manifest = load.load_manifest(str(tmp_path / "out"))
    make_bucket("corpus")
    for f in sorted(data.iterdir()):
        fs.write_bytes(f"s3://corpus/in/{f.name}", f.read_bytes())
    plan, remote = _run(_recipe("s3://corpus/in", "s3://corpus/out"), tmp_path)
    assert remote.out_dir == f"s3://corpus/out/snapshots/{plan.snapshot}"
    manifest = load.load_manifest("s3://corpus/out")
    assert [(s["path"], s["rows"], s["sha256"]) for s in remote.shards] == \
           [(s["path"], s["rows"], s["sha256"]) for s in local.shards]
    assert manifest["counts"] == local_manifest["counts"] and manifest["num_rows"] == 120
    assert manifest["stages"]["decontaminate"]["dropped"] == local_manifest["stages"]["decontaminate"]["dropped"]
    assert manifest["counts"]["total"]["quarantined"] == 1
    assert manifest["stages"]["exact_dedup"]["dropped"] == {"duplicate": 3}
    quarantine = load.read_shard(f"{remote.out_dir}/{manifest['quarantine'][0]['path']}")
    assert quarantine.select(["source_file", "source_row"]).to_pylist() == [
        {"source_file": "s3://corpus/in/pool.jsonl", "source_row": 404}]  # the URL and line
    assert [x["path"] for x in manifest["inputs"]] == ["s3://corpus/in/pool.jsonl", "s3://corpus/in/math.parquet"]
    assert [x["sha256"] for x in manifest["inputs"]] == [x["sha256"] for x in local_manifest["inputs"]]
    paths = load.shard_paths("s3://corpus/out", verify="sha256")
    assert paths == [f"{remote.out_dir}/{s['path']}" for s in remote.shards]
    table = pa.concat_tables(load.read_shard(p) for p in paths)
    assert table.equals(pa.concat_tables(load.read_shard(p) for p in load.shard_paths(str(tmp_path / "out"))))
    assert load.load_hf("s3://corpus/out").num_rows == 120
    assert not fs.exists(f"{remote.out_dir}/_work") and not fs.exists("s3://corpus/out/.thresher.lock")
    with outdir.output_lock("s3://corpus/out"):  # the lock object, a conditional put on S3
        with pytest.raises(outdir.OutputBusyError):
            with outdir.output_lock("s3://corpus/out"):
                pass
    # A second run (a smaller recipe, for time): a new snapshot, and LATEST moves to it; the
    # first stays (keep_snapshots: 3).
    second = {**_recipe("s3://corpus/in", "s3://corpus/out"), "stages": [{"type": "exact_dedup"}]}
    plan2, _ = _run(second, tmp_path)
    assert plan2.snapshot != plan.snapshot
    assert fs.read_text("s3://corpus/out/LATEST") == f"snapshots/{plan2.snapshot}\n"
    assert [s.id for s in snapshots.list_snapshots("s3://corpus/out")] == [plan.snapshot, plan2.snapshot]
    assert load.load_manifest("s3://corpus/out")["snapshot"] == plan2.snapshot
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("s3:")]
    assert not (Path.cwd() / "s3:").exists() and not (Path(__file__).resolve().parents[2] / "s3:").exists()
