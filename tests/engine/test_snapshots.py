"""Snapshots and refresh: `latest` moves only to a finished snapshot, readers see one snapshot
whole, a killed refresh leaves `latest` alone, an unchanged rerun is "up to date", old
snapshots are pruned after the switch (never a file thresher did not write), and a refresh
reuses per-row results yet equals a from-scratch run byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import demo_pool_rows
from thresher.cli import app
from thresher.io.row_cache import RowCache, content_keys
from thresher.load import load_manifest, read_shard, shard_paths

pytestmark = pytest.mark.slow  # whole recipes through the CLI


def _write(path: Path, rows: list[dict], mode: str = "w") -> None:
    with open(path, mode) as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def _recipe(tmp: Path, rows: list[dict], stages: list[dict] | None = None, name: str = "recipe.yaml",
            out: str = "out", **output) -> Path:
    _write(tmp / "in.jsonl", rows)
    r = {"name": "snap", "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
         "stages": stages if stages is not None else [{"type": "exact_dedup"}],
         "output": {"dir": out, "shard_max_rows": 300, **output}}
    (tmp / name).write_text(yaml.safe_dump(r))
    return tmp / name


def _cli(*args: str):
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.exit_code, res.output, res.stderr if hasattr(res, "stderr") else "")
    return res.output


def _snapshots(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "snapshots").iterdir())


def _shard_bytes(folder: Path) -> dict[str, str]:
    m = json.loads((folder / "manifest.json").read_text())
    return {s["path"]: hashlib.sha256((folder / s["path"]).read_bytes()).hexdigest() for s in m["shards"]}


def test_up_to_date_force_and_diff(tmp_path):
    rows = demo_pool_rows(600)
    recipe = _recipe(tmp_path, rows)
    out = tmp_path / "out"
    _cli("run", str(recipe), "--no-prefect")
    first = _snapshots(out)
    assert len(first) == 1 and os.readlink(out / "latest") == f"snapshots/{first[0]}"
    assert (out / "LATEST").read_text() == f"snapshots/{first[0]}\n"

    said = _cli("run", str(recipe), "--no-prefect")
    assert "up to date" in said and _snapshots(out) == first  # no new snapshot

    _cli("run", str(recipe), "--no-prefect", "--force")
    a, b = _snapshots(out)
    assert os.readlink(out / "latest") == f"snapshots/{b}"
    assert _shard_bytes(out / "snapshots" / a) == _shard_bytes(out / "snapshots" / b)  # same bytes again

    _write(tmp_path / "in.jsonl", demo_pool_rows(25, offset=600), mode="a")  # the input changed: not up to date
    said = _cli("run", str(recipe), "--no-prefect")
    assert "up to date" not in said
    c = _snapshots(out)[-1]
    m = load_manifest(str(out))
    assert m["snapshot"] == c and m["counts"]["total"]["read"] == 625

    d = json.loads(_cli("diff", str(out / "snapshots" / b), str(out), "--json"))
    assert d["snapshots"] == [b, c]
    assert d["by_source"]["pool"]["read"] == [600, 625, 25]
    assert d["inputs"]["changed"] == [str(tmp_path / "in.jsonl")]
    listing = _cli("inspect", str(out), "--rows", "0")
    assert all(s in listing for s in (a, b, c)) and "latest" in listing


def test_keep_snapshots_prunes_after_the_switch_and_spares_foreign_files(tmp_path):
    recipe = _recipe(tmp_path, demo_pool_rows(200), keep_snapshots=2)
    out = tmp_path / "out"
    _cli("run", str(recipe), "--no-prefect")
    oldest = _snapshots(out)[0]
    (out / "snapshots" / oldest / "shards" / "my-notes.txt").write_text("mine")  # a user's file
    (out / "notes.txt").write_text("also mine")
    time.sleep(1.05)  # snapshot ids are per second (a collision would get a `-2` suffix instead)
    _cli("run", str(recipe), "--no-prefect", "--force")
    time.sleep(1.05)
    _cli("run", str(recipe), "--no-prefect", "--force")
    snaps = _snapshots(out)
    # The oldest snapshot's files are gone except the user's, which keeps its folder.
    assert len(snaps) == 3 and snaps[0] == oldest
    assert sorted(str(p.relative_to(out / "snapshots" / oldest)) for p in (out / "snapshots" / oldest).rglob("*")
                  if p.is_file()) == ["shards/my-notes.txt"]
    assert (out / "notes.txt").read_text() == "also mine"
    assert os.readlink(out / "latest") == f"snapshots/{snaps[-1]}"
    listing = _cli("inspect", str(out), "--rows", "0")
    assert snaps[1] in listing and snaps[2] in listing and oldest not in listing  # no marker: not a snapshot


def test_pointer_file_serves_readers_without_the_symlink(tmp_path):
    recipe = _recipe(tmp_path, demo_pool_rows(100))
    out = tmp_path / "out"
    _cli("run", str(recipe), "--no-prefect")
    os.unlink(out / "latest")  # a filesystem without symlinks
    m = load_manifest(str(out))
    assert m["num_rows"] == sum(read_shard(p).num_rows for p in shard_paths(str(out), m)) == 100
    assert "100" in _cli("inspect", str(out), "--rows", "0")


def _read_all(out: Path) -> tuple[str, tuple]:
    m = load_manifest(str(out))
    ids: list = []
    for p in shard_paths(str(out), m, verify="sha256"):
        ids += read_shard(p).column("id").to_pylist()
    assert len(ids) == m["num_rows"]
    return m["snapshot"], tuple(sorted(ids))


def _cli_process(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "thresher.cli", "run", str(recipe), "--no-prefect", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_reader_during_a_refresh_sees_the_old_or_the_new_snapshot_whole(tmp_path):
    base = demo_pool_rows(1500)
    recipe = _recipe(tmp_path, base)
    out = tmp_path / "out"
    _cli("run", str(recipe), "--no-prefect")
    old = _read_all(out)
    _write(tmp_path / "in.jsonl", [{"id": f"new{i}", "text": f"a new row {i}"} for i in range(300)], mode="a")

    seen: list[tuple[str, tuple]] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(_read_all(out))

    t = threading.Thread(target=reader)
    t.start()
    p = _cli_process(recipe)
    try:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    finally:
        time.sleep(0.3)  # a few reads of the new snapshot too
        stop.set()
        t.join()
    new = _read_all(out)
    assert new[0] != old[0] and len(new[1]) == len(old[1]) + 300
    assert len(seen) > 3
    assert {s for s in seen} <= {old, new}  # never a mix, never a partial snapshot
    assert old in seen and new in seen


def test_killed_refresh_leaves_latest_on_the_last_good_snapshot(tmp_path):
    recipe = _recipe(tmp_path, demo_pool_rows(300))
    out = tmp_path / "out"
    _cli("run", str(recipe), "--no-prefect")
    good = _read_all(out)
    _write(tmp_path / "in.jsonl", [{"id": f"x{i}", "text": f"more text {i}"} for i in range(50)], mode="a")
    p = _cli_process(recipe)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and len(_snapshots(out)) < 2:
        time.sleep(0.002)
    assert p.poll() is None, "the refresh finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    unfinished = [s for s in _snapshots(out) if s != good[0]]
    assert len(unfinished) == 1 and not (out / "snapshots" / unfinished[0] / "manifest.json").exists()
    assert _read_all(out) == good  # latest untouched, and still whole

    _cli("run", str(recipe), "--no-prefect")  # the next run removes the dead one and finishes
    snaps = _snapshots(out)
    # The dead snapshot is gone (its id may be reused by a rerun within the same second):
    # the good one and the new one remain, both finished.
    assert len(snaps) == 2 and all((out / "snapshots" / s / "manifest.json").exists() for s in snaps)
    assert len(_read_all(out)[1]) == len(good[1]) + 50


def test_cache_info_and_prune(tmp_path):
    out = tmp_path / "out"
    cache = RowCache.open(str(out / "cache"), "embed:abc")
    cache.put_many(zip(content_keys(["a", "b", "c"]), [b"x" * 100] * 3, strict=True))
    cache.close()
    info = _cli("cache", "info", str(out))
    assert "embed:abc" in info and "3" in info
    said = _cli("cache", "prune", str(out), "--max-bytes", "150")
    assert "removed 2 entries" in said
    assert RowCache.open(str(out / "cache"), "embed:abc").get_many(content_keys(["a", "b", "c"])).count(None) == 2


def test_refresh_embeds_only_new_rows_and_equals_a_fresh_run(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("onnxruntime")
    # onnx runs one text per forward, so a row's vector does not depend on its batch and is
    # reused; torch's padded batches differ in the last bit (1e-7) with their make-up, so the
    # torch backend recomputes every row rather than break byte-identity.
    stages = [{"type": "embed", "params": {"device": "cpu", "backend": "onnx"}}, {"type": "ngram_features"}]
    rows = demo_pool_rows(60)
    recipe = _recipe(tmp_path, rows[:48], stages)
    out = tmp_path / "out"
    _cli("run", str(recipe), "--no-prefect")
    m = load_manifest(str(out))
    assert m["cache"]["by_stage"]["embed"] == {"hits": 0, "misses": 48}

    _write(tmp_path / "in.jsonl", rows[48:], mode="a")
    _cli("run", str(recipe), "--no-prefect")
    m = load_manifest(str(out))
    assert m["cache"]["by_stage"]["embed"] == {"hits": 48, "misses": 12}

    # From scratch over the same input, with no cache: the same bytes.
    fresh = yaml.safe_load(recipe.read_text())
    fresh["output"]["dir"], fresh["cache"] = "fresh", {"enabled": False}
    (tmp_path / "fresh.yaml").write_text(yaml.safe_dump(fresh))
    _cli("run", str(tmp_path / "fresh.yaml"), "--no-prefect")
    assert _shard_bytes(out / "latest") == _shard_bytes(tmp_path / "fresh" / "latest")
    t = pa.concat_tables(read_shard(p) for p in shard_paths(str(out)))
    assert t.num_rows == 60 and "embedding" in t.column_names
