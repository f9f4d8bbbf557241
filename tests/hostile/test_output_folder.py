"""Issue 10, output-folder safety: nothing a user keeps beside (or under) a run's output is
ever lost, two runs never write one folder, a manifest whose shards changed is not trusted,
and ids that several rows share are caught.

Each test plants the hostile situation, records the sha256 of every file the user had, and
checks exact outcomes: exit codes, messages, counts, and that no user file changed.
"""

from __future__ import annotations

import gzip
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
from thresher.core.errors import RecipeError
from thresher.engine.outdir import LOCK_FILE, OutputBusyError, output_lock
from thresher.engine.plan import make_plan
from thresher.flows.local import run_plan
from thresher.io.shards import write_ipc
from thresher.load import ShardMismatchError, load_hf, load_manifest, read_shard, shard_paths
from thresher.recipe.schema import Recipe


def _snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest), minus `skip` prefixes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _recipe(tmp: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return p


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _user_folder(root: Path) -> None:
    """A data folder as a user keeps it: inputs, notes, their own index and quarantine."""
    rows = demo_pool_rows(40)
    (root / "shards").mkdir(parents=True)
    with pa.OSFile(str(root / "shards" / "wiki.arrow"), "wb") as sink:
        t = pa.Table.from_pylist([{"id": r["id"], "text": r["text"]} for r in rows[:20]])
        with pa.ipc.new_file(sink, t.schema) as w:
            w.write_table(t)
    _write_jsonl(root / "manifest.json", rows[20:])  # an input that happens to be called manifest.json
    (root / "reports").mkdir()
    (root / "reports" / "notes.txt").write_text("my notes\n")
    (root / "indexes").mkdir()
    (root / "indexes" / "my.faiss").write_bytes(b"\x00faiss" * 100)
    (root / "quarantine").mkdir()
    (root / "quarantine" / "part-00000-00000.arrow").write_bytes(b"the user's own file")


# ---------------------------------------------------------------------------------------
# Case 2: an output folder overlapping the inputs


def test_output_folder_over_the_inputs_is_refused_before_anything_is_touched(tmp_path):
    data = tmp_path / "data"
    _user_folder(data)
    recipe = {"sources": [{"name": "wiki", "paths": ["shards/wiki.arrow"], "id_field": "id"},
                          {"name": "m", "paths": ["manifest.json"], "id_field": "id"}],
              "output": {"dir": "."}}
    path = _recipe(data, recipe)
    before = _snapshot(data)
    res = _cli("run", path, "--no-prefect")
    assert res.exit_code == 2, res.output
    out = os.path.realpath(data)
    flat = " ".join(res.output.split())
    assert (f"output.dir: {out} overlaps input {out}/shards/wiki.arrow of source wiki; choose an output folder "
            "outside the inputs") in flat
    assert f"output.dir: {out} overlaps input {out}/manifest.json of source m;" in flat
    assert _snapshot(data) == before  # nothing deleted, changed or added (not even a lock file)
    assert _cli("validate", path).exit_code == 2


@pytest.mark.parametrize(("paths", "out", "refused"), [
    (["data/**/*.jsonl"], "data/out", True),   # a rerun would read its own files
    (["data/*/*.jsonl"], "data/out", True),
    (["data/*.jsonl"], "data/out", False),     # the glob cannot reach into data/out
    (["data/a.jsonl"], "data/out", False),
    (["data/a.jsonl"], "data", True),          # output folder contains the input
    (["data"], "data/out", True),              # output folder inside an input folder
    (["data/*.jsonl"], "..", True),            # output folder contains the glob's root
])
def test_overlap_rules(tmp_path, paths, out, refused):
    _write_jsonl(tmp_path / "data" / "a.jsonl", demo_pool_rows(3))
    fmt = {"format": "hf_disk"} if paths == ["data"] else {}
    recipe = Recipe(sources=[{"name": "s", "paths": paths, **fmt}], output={"dir": out}, base_dir=str(tmp_path))
    if not refused:
        make_plan(recipe, with_hashes=False)
        return
    with pytest.raises(RecipeError) as exc:
        make_plan(recipe, with_hashes=False)
    assert [p for p in exc.value.problems if p.startswith("output.dir:")] == [
        f"output.dir: {os.path.realpath(recipe.out_dir)} overlaps input {recipe.resolve(paths[0])} of source s; "
        "choose an output folder outside the inputs"]


def test_stage_inputs_count_too(tmp_path):
    """A decontamination benchmark (any `paths` in a stage's params) is an input as well."""
    _write_jsonl(tmp_path / "pool.jsonl", demo_pool_rows(3))
    _write_jsonl(tmp_path / "bench" / "gsm8k.jsonl", [{"question": "q", "answer": "a"}])
    recipe = Recipe(sources=[{"name": "s", "paths": ["pool.jsonl"]}], base_dir=str(tmp_path),
                    stages=[{"type": "decontaminate",
                             "params": {"benchmarks": [{"preset": "gsm8k", "paths": ["bench/gsm8k.jsonl"]}]}}],
                    output={"dir": "bench"})
    with pytest.raises(RecipeError) as exc:
        make_plan(recipe, with_hashes=False)
    assert (f"output.dir: {tmp_path}/bench overlaps input {tmp_path}/bench/gsm8k.jsonl of stage decontaminate "
            "(stages.0); choose an output folder outside the inputs") in exc.value.problems


def test_a_manifest_json_thresher_did_not_write_is_never_replaced(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", demo_pool_rows(3))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text('{"my": "own manifest"}')
    recipe = Recipe(sources=[{"name": "s", "paths": ["a.jsonl"]}], output={"dir": "out"}, base_dir=str(tmp_path))
    with pytest.raises(RecipeError) as exc:
        make_plan(recipe, with_hashes=False)
    assert exc.value.problems == [
        f"output.dir: {tmp_path}/out/manifest.json is not a thresher manifest; thresher would replace it, so "
        "choose another output folder (or move the file)"]
    assert (tmp_path / "out" / "manifest.json").read_text() == '{"my": "own manifest"}'


@pytest.mark.slow
def test_reruns_write_only_snapshots_and_spare_every_user_file(tmp_path):
    """User files inside the output folder survive every rerun; old snapshots and a killed
    run's unfinished one go."""
    _write_jsonl(tmp_path / "data" / "a.jsonl", demo_pool_rows(1000))
    out = tmp_path / "data" / "out"
    (out / "reports").mkdir(parents=True)
    (out / "reports" / "notes.txt").write_text("my notes\n")
    (out / "indexes").mkdir()
    (out / "indexes" / "my.faiss").write_bytes(b"\x00faiss")
    (out / "shards").mkdir()
    (out / "shards" / "mine.arrow").write_bytes(b"not thresher's")
    (out / "shards" / ".keep.tmp-notes").write_text("a user file that merely contains .tmp-")
    user = _snapshot(out)
    recipe = {"sources": [{"name": "a", "paths": ["data/*.jsonl"], "id_field": "id"}],
              "output": {"dir": "data/out", "shard_max_rows": 100, "partitions": 2, "keep_snapshots": 2}}
    for _ in range(3):  # the glob data/*.jsonl never reaches data/out: 1,000 rows every time
        res = _cli("run", _recipe(tmp_path, recipe), "--no-prefect", "--force")
        assert res.exit_code == 0, res.output
        m = load_manifest(str(out))
        assert m["num_rows"] == 1000 and m["counts"]["by_source"]["a"]["read"] == 1000
    assert len([f for f in m["files"] if f.startswith("shards/")]) == 11  # 2 partitions of ~500 rows, 100 per shard
    assert len(list((out / "snapshots").iterdir())) == 2  # keep_snapshots

    # A killed run's unfinished snapshot (marked as thresher's, no manifest) with a shard in it.
    dead = out / "snapshots" / "20000101T000000Z"
    (dead / "shards").mkdir(parents=True)
    (dead / ".thresher-snapshot").write_text('{"id": "20000101T000000Z"}')
    (dead / "shards" / "part-00009-00000.arrow").write_bytes(b"left by a killed run")
    recipe["output"]["partitions"] = 1
    res = _cli("run", _recipe(tmp_path, recipe), "--no-prefect")
    assert res.exit_code == 0, res.output
    m = load_manifest(str(out))
    assert not dead.exists()
    shards = sorted(p.name for p in (out / "latest" / "shards").glob("part-*.arrow"))
    assert shards == [f"part-00000-{j:05d}.arrow" for j in range(10)]
    assert [f for f in m["files"] if f.startswith("shards/")] == [f"shards/part-00000-{j:05d}.arrow" for j in range(10)]
    # Every user file intact; README.md is thresher's dataset card (it lists the latest shards).
    assert _snapshot(out, skip=("snapshots/", "LATEST", ".thresher", "README.md")) == user
    assert "snapshots/" + m["snapshot"] + "/shards/part-00000-00000.arrow" in (out / "README.md").read_text()
    assert not list(out.rglob("_work"))


# ---------------------------------------------------------------------------------------
# Case 6: two runs into one folder


def test_second_holder_fails_at_once_naming_the_first_and_wait_waits(tmp_path):
    out = str(tmp_path / "out")
    with output_lock(out):
        t0 = time.monotonic()
        with pytest.raises(OutputBusyError) as exc, output_lock(out):
            pass
        assert time.monotonic() - t0 < 1
        assert f"is in use by another thresher run (pid {os.getpid()}, started 20" in str(exc.value)
        assert "--wait" in str(exc.value)

    got = []
    held = threading.Event()

    def holder():
        with output_lock(out):
            held.set()
            time.sleep(1.0)
            got.append("released")

    th = threading.Thread(target=holder)
    th.start()
    held.wait(5)
    with output_lock(out, wait=True):
        got.append("acquired")  # only after the holder let go
    th.join()
    assert got == ["released", "acquired"]


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time; from thresher.engine.outdir import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(OutputBusyError, match=f"pid {p.pid}, started "):
        with output_lock(str(out)):
            pass
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with output_lock(str(out)):  # the kernel dropped the dead holder's lock
        pass


def _big_corpus(tmp: Path, files: int = 6, copies: int = 5) -> None:
    base = demo_pool_rows()
    for f in range(files):
        with gzip.open(tmp / f"part{f}.jsonl.gz", "wt") as fh:
            for c in range(copies):
                for r in base:
                    fh.write(json.dumps({"id": f"{r['id']}#{f}.{c}", "text": f"{r['text']} ({f}.{c})"}) + "\n")


def _run_cli(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "thresher.cli", "run", str(recipe), "--no-prefect", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="400"))


def _locked_by(out: Path) -> int | None:
    try:
        return json.loads((out / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_two_runs_into_one_folder_then_a_killed_one(tmp_path):
    _big_corpus(tmp_path)
    recipe = _recipe(tmp_path, {"seed": 1, "sources": [{"name": "pool", "paths": ["part*.jsonl.gz"], "id_field": "id"}],
                                "output": {"dir": "out", "shard_max_rows": 1500, "partitions": 4}})
    out = tmp_path / "out"
    a = _run_cli(recipe)
    deadline = time.time() + 120
    while _locked_by(out) != a.pid and time.time() < deadline:
        time.sleep(0.01)
    assert a.poll() is None, "the first run finished before the second started"
    t0 = time.monotonic()
    b = _run_cli(recipe)
    assert b.wait(timeout=120) == 1
    assert time.monotonic() - t0 < 60  # at once (the CLI's start-up), not after the first run
    assert f"is in use by another thresher run (pid {a.pid}, started " in " ".join(b.stderr.read().split())
    assert a.wait(timeout=300) == 0, a.stderr.read()[-3000:]
    good = load_manifest(str(out))
    assert good["num_rows"] == 6 * 5 * len(demo_pool_rows())

    # A third run killed part-way: the folder never carries a manifest its shards contradict.
    c = _run_cli(recipe, "--force")
    while time.time() < deadline + 120 and not list(out.glob("snapshots/*/_work")) and c.poll() is None:
        time.sleep(0.005)
    assert c.poll() is None, "the run finished before it could be killed"
    os.kill(c.pid, signal.SIGKILL)
    c.wait()
    m = load_manifest(str(out))  # `latest` still names the good snapshot, whole
    assert m == good
    shard_paths(str(out), m, verify="sha256")
    d = _run_cli(recipe, "--force")  # the killed run's lock died with it
    assert d.wait(timeout=300) == 0, d.stderr.read()[-3000:]
    assert [s["sha256"] for s in load_manifest(str(out))["shards"]] == [s["sha256"] for s in good["shards"]]


@pytest.mark.slow
def test_run_plan_waits_for_the_lock_when_asked(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", demo_pool_rows(50))
    recipe = Recipe(sources=[{"name": "a", "paths": ["a.jsonl"], "id_field": "id"}], output={"dir": "out"},
                    base_dir=str(tmp_path))
    plan = make_plan(recipe)
    assert plan.wait_for_lock is False
    with output_lock(plan.root_dir), pytest.raises(OutputBusyError):
        run_plan(plan)
    assert not (tmp_path / "out" / "snapshots").exists()  # refused before preparing anything
    plan.wait_for_lock = True
    held = threading.Event()

    def hold():
        with output_lock(plan.root_dir):
            held.set()
            time.sleep(1.0)

    th = threading.Thread(target=hold)
    th.start()
    held.wait(5)
    t0 = time.monotonic()
    assert run_plan(plan).manifest.endswith("manifest.json")
    assert time.monotonic() - t0 >= 0.5
    th.join()
    assert load_manifest(plan.out_dir)["num_rows"] == 50


def _tiny_run(out: Path) -> dict:
    """A finished run made by hand: two shards and their manifest entries."""
    entries = []
    for j in range(2):
        rel = f"shards/part-00000-{j:05d}.arrow"
        t = pa.table({"id": [f"r{j}{i}" for i in range(5)], "text": ["some text"] * 5})
        digest = write_ipc(str(out / rel), t, "none", 4096)
        entries.append({"path": rel, "rows": 5, "bytes": (out / rel).stat().st_size, "sha256": digest})
    m = {"format": "thresher-manifest/1", "ipc_format": "stream", "shards": entries}
    (out / "manifest.json").write_text(json.dumps(m))
    return m


def test_loaders_refuse_a_manifest_whose_shards_changed(tmp_path):
    out = tmp_path / "out"
    _tiny_run(out)
    assert len(shard_paths(str(out), verify="sha256")) == 2
    shard = out / "shards" / "part-00000-00001.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[:-8])  # cut short
    with pytest.raises(ShardMismatchError) as exc:
        shard_paths(str(out))
    assert str(exc.value) == (f"{shard}: {len(data) - 8} bytes on disk, the manifest lists {len(data)}; the run's "
                              "folder was changed after it finished: rerun it")
    with pytest.raises(ShardMismatchError, match="part-00000-00001.arrow: "):
        load_hf(str(out))
    # Same size, different bytes: only the sha256 check sees it.
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert len(shard_paths(str(out))) == 2
    with pytest.raises(ShardMismatchError, match=r"part-00000-00001.arrow: sha256 [0-9a-f]{16}… on disk"):
        shard_paths(str(out), verify="sha256")
    shard.unlink()
    with pytest.raises(ShardMismatchError, match="part-00000-00001.arrow: listed in the manifest but missing"):
        shard_paths(str(out))


# ---------------------------------------------------------------------------------------
# Case 13 (second half): ids shared by several rows, across sources


def _dup_recipe(tmp: Path, policy: str | None) -> Path:
    rows = demo_pool_rows(30)
    _write_jsonl(tmp / "a.jsonl", rows[:20])
    # b: a copy of a's ids x0..x2 (different texts), and one id (rows[5]) twice more.
    b = [{"id": rows[i]["id"], "text": f"other text {i}"} for i in range(3)]
    b += [{"id": rows[5]["id"], "text": "again five"}, {"id": rows[5]["id"], "text": "and again five"}]
    b += [{"id": r["id"], "text": r["text"]} for r in rows[20:30]]
    _write_jsonl(tmp / "b.jsonl", b)
    recipe: dict = {"sources": [{"name": "a", "paths": ["a.jsonl"], "id_field": "id"},
                                {"name": "b", "paths": ["b.jsonl"], "id_field": "id"}],
                    "output": {"dir": f"out_{policy}"}}
    if policy:
        recipe["on_duplicate_id"] = policy
    return _recipe(tmp, recipe, f"{policy}.yaml")


@pytest.mark.slow
def test_duplicate_ids_warn_rename_error(tmp_path, caplog):
    rows = demo_pool_rows(30)
    shared = [rows[0]["id"], rows[1]["id"], rows[2]["id"], rows[5]["id"]]

    res = _cli("run", _dup_recipe(tmp_path, None), "--no-prefect")  # default: warn
    assert res.exit_code == 0, res.output
    m = load_manifest(str(tmp_path / "out_None"))
    assert m["counts"]["duplicate_ids"] == {"a": 0, "b": 5}
    assert m["num_rows"] == 35
    warned = [r.getMessage() for r in caplog.records if r.name == "thresher.duplicate_ids"]
    assert warned == [f"5 row(s) repeat an id an earlier row has (first: {', '.join(repr(i) for i in shared)}); "
                      "counted as duplicate_ids in the manifest (on_duplicate_id: rename makes them unique)"]

    res = _cli("run", _dup_recipe(tmp_path, "rename"), "--no-prefect")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out_rename"
    t = pa.concat_tables([read_shard(p) for p in shard_paths(str(out))])
    ids = dict(zip(zip(t.column("source").to_pylist(), t.column("source_row").to_pylist(), strict=True),
                   t.column("id").to_pylist(), strict=True))
    assert len(set(ids.values())) == 35
    assert [ids[("b", r)] for r in (1, 2, 3, 4, 5)] == [f"{shared[0]}#1", f"{shared[1]}#1", f"{shared[2]}#1",
                                                        f"{shared[3]}#1", f"{shared[3]}#2"]
    assert [ids[("a", r)] for r in (1, 2, 3, 6)] == shared  # first occurrences keep their id
    assert load_manifest(str(out))["counts"]["duplicate_ids"] == {"a": 0, "b": 5}

    res = _cli("run", _dup_recipe(tmp_path, "error"), "--no-prefect")
    assert res.exit_code == 1
    flat = " ".join(res.output.split())
    assert (f"5 row(s) repeat an id an earlier row has (first: {shared[0]!r}, {shared[1]!r}, {shared[2]!r}, "
            f"{shared[3]!r}); ids must be unique") in flat
    assert not (tmp_path / "out_error" / "manifest.json").exists()


@pytest.mark.slow
def test_a_file_that_breaks_off_fails_the_run_naming_it(tmp_path):
    """`unreadable_files/<source>` > 0 fails the run, whatever max_bad_fraction says."""
    rows = demo_pool_rows(2000)
    good = tmp_path / "good.jsonl"
    _write_jsonl(good, rows[:1000])
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows[1000:]).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    recipe = {"sources": [{"name": "s", "paths": ["good.jsonl", "cut.jsonl.gz"], "id_field": "id",
                           "max_bad_fraction": 1.0}], "output": {"dir": "out"}}
    res = _cli("run", _recipe(tmp_path, recipe), "--no-prefect")
    assert res.exit_code == 1
    flat = " ".join(res.output.split())
    # One line naming the file and where it broke (the quarantine record's reason).
    assert f"source 's': 1 file(s) could not be read to the end: file unreadable: {tmp_path}/cut.jsonl.gz: " \
        "cannot be read past line 498 (file byte" in flat
    assert not (tmp_path / "out" / "manifest.json").exists()
