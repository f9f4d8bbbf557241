"""Whole runs read the way a training job reads them: balanced shards split over ranks, the
dataset card behind `load_dataset(OUT)`, Parquet through every reader, the torch
IterableDataset over ranks × DataLoader workers, and byte-identical shards from two folders.

Three runs (module fixture) serve every test here: Arrow with `num_shards: 4` in two folders
holding the same inputs, and Parquet with `num_shards: 2`, `columns` and `absolute_paths`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import demo_pool_rows, run_recipe
from thresher.load import TorchShards, load_manifest, open_dataset, read_shard, shard_paths

pytestmark = pytest.mark.slow

N = 400


def _inputs(folder: Path) -> None:
    rows, seen = [], set()
    for r in demo_pool_rows(N + 20):
        if r["id"] not in seen and len(rows) < N:
            seen.add(r["id"])
            rows.append({**r, "meta": {"k": len(rows)}})
    lines = [json.dumps(r) for r in rows]
    lines.insert(7, '{"id": "broken", "text": ')  # one quarantined record (line 8)
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "pool.jsonl").write_text("\n".join(lines) + "\n")


def _recipe(**output) -> dict:
    return {"name": "readers", "seed": 5,
            "sources": [{"name": "pool", "paths": ["data/pool.jsonl"], "id_field": "id"}],
            "output": {"dir": "out", "partitions": 3, "num_shards": 4, "drop_columns": ["meta"], **output}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    a = tmp_path_factory.mktemp("a")
    b = tmp_path_factory.mktemp("elsewhere") / "deeper" / "b"
    _inputs(a)
    shutil.copytree(a, b)
    run_recipe(_recipe(), a)
    run_recipe(_recipe(), b)
    run_recipe(_recipe(dir="out_pq", format="parquet", parquet_row_group_rows=64, num_shards=2, drop_columns=[],
                       columns=["id", "text", "source_file", "source_row"], absolute_paths=True), a)
    return {"a": str(a / "out"), "b": str(b / "out"), "pq": str(a / "out_pq"), "input": str(a / "data" / "pool.jsonl")}


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _table(out: str) -> pa.Table:
    return pa.concat_tables(read_shard(p) for p in shard_paths(out))


def test_balanced_shards_are_byte_identical_from_two_folders(runs):
    ma, mb = load_manifest(runs["a"]), load_manifest(runs["b"])
    assert [s["path"] for s in ma["shards"]] == [f"shards/part-00000-{j:05d}.arrow" for j in range(4)]
    assert [s["rows"] for s in ma["shards"]] == [100, 100, 100, 100] and ma["num_shards"] == 4
    assert [_sha(p) for p in shard_paths(runs["a"])] == [_sha(p) for p in shard_paths(runs["b"])]
    qa, qb = (str(Path(o) / "latest" / m["quarantine"][0]["path"]) for o, m in ((runs["a"], ma), (runs["b"], mb)))
    assert _sha(qa) == _sha(qb)
    q = read_shard(qa).to_pylist()
    assert [(r["source_file"], r["source_row"]) for r in q] == [("data/pool.jsonl", 8)]
    t = _table(runs["a"])
    assert set(t.column("source_file").to_pylist()) == {"data/pool.jsonl"} and "meta" not in t.column_names
    assert t.num_rows == N and len(set(t.column("id").to_pylist())) == N


def test_load_dataset_reads_exactly_the_shards_and_splits_evenly_by_node(runs, tmp_path, monkeypatch):
    import datasets
    from datasets.distributed import split_dataset_by_node

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    # A stray Arrow file in reports/ (the decontamination audit's place) must not be loaded.
    snap = Path(runs["a"]) / "latest"
    (snap / "reports").mkdir(exist_ok=True)
    stray = pa.table({"z": pa.array([1], pa.int8())})
    with pa.OSFile(str(snap / "reports" / "x-audit.arrow"), "wb") as fh, pa.ipc.new_stream(fh, stray.schema) as w:
        w.write_table(stray)
    ids = _table(runs["a"]).column("id").to_pylist()
    for where in (runs["a"], runs["a"] + "/latest"):
        ds = datasets.load_dataset(where)["train"]
        assert ds["id"] == ids
    ds = datasets.load_dataset(runs["a"], split="train")
    for world in (2, 4):
        parts = [split_dataset_by_node(ds, rank=r, world_size=world)["id"] for r in range(world)]
        assert [len(p) for p in parts] == [N // world] * world
        assert sorted(i for p in parts for i in p) == sorted(ids)
    stream = datasets.load_dataset(runs["a"], split="train", streaming=True)
    assert [r["id"] for r in stream] == ids
    for world in (2, 4):  # 4 shards: each rank streams whole shards
        parts = [[r["id"] for r in split_dataset_by_node(stream, rank=r, world_size=world)] for r in range(world)]
        assert [len(p) for p in parts] == [N // world] * world and sorted(sum(parts, [])) == sorted(ids)


def test_parquet_round_trips_through_every_reader(runs, tmp_path, monkeypatch):
    import datasets
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    m = load_manifest(runs["pq"])
    paths = shard_paths(runs["pq"])
    assert m["shard_format"] == "parquet" and [Path(p).name for p in paths] == [
        "part-00000-00000.parquet", "part-00000-00001.parquet"]
    assert [s["rows"] for s in m["shards"]] == [200, 200]
    assert pq.ParquetFile(paths[0]).metadata.num_row_groups == 4  # 200 rows in row groups of 64
    t = _table(runs["pq"])
    assert t.column_names == ["id", "text", "source_file", "source_row"]
    assert set(t.column("source_file").to_pylist()) == {runs["input"]}  # absolute_paths: true
    # Same inputs and seed as the Arrow run: the same rows in the same order, whatever the shards.
    arrow = _table(runs["a"])
    assert t.drop_columns(["source_file"]).equals(arrow.select(["id", "text", "source_row"]))
    assert datasets.load_dataset(runs["pq"], split="train")["id"] == t.column("id").to_pylist()
    assert pads.dataset(paths, format="parquet").to_table().equals(t)
    assert open_dataset(runs["pq"]).to_table().equals(t)
    torch_rows = list(TorchShards(runs["pq"], rank=0, world_size=1, columns=["id", "source_row"]))
    assert [r["id"] for r in torch_rows] == t.column("id").to_pylist()


@pytest.mark.parametrize("run", ["a", "pq"])  # 4 shards: whole shards per reader; 2: row ranges
def test_torch_dataset_over_two_ranks_and_two_workers_reads_every_row_once(runs, run):
    import torch

    seen = []
    for rank in range(2):
        ds = TorchShards(runs[run], rank=rank, world_size=2, columns=["id", "source_row"], format="torch")
        loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)
        batches = list(loader)
        assert all(isinstance(b["source_row"], torch.Tensor) for b in batches)
        got = [(i, int(s)) for b in batches for i, s in zip(b["id"], b["source_row"], strict=True)]
        assert len(got) == N // 2
        seen += got
    assert sorted(seen) == sorted(zip(_table(runs[run]).column("id").to_pylist(),
                                      _table(runs[run]).column("source_row").to_pylist(), strict=True))
