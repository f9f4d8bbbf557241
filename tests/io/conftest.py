"""Fixtures for the reader tests: the same three records in every format, and ways to read a
source with the readers alone (fast) or to list a published run's rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from thresher.io.ingest import plan_reads, read_task
from thresher.load import load_manifest, read_shard, shard_paths
from thresher.recipe.load import validate_recipe

QA = [
    {"qid": 1, "question": "What is 2 + 3?", "answer": "5", "meta": {"level": 1}},
    {"qid": 2, "question": "Name the capital of France.", "answer": "Paris", "meta": {"level": 2}},
    {"qid": 3, "question": "Cafe\u0301 menu\u0007 price?", "answer": "4 euros", "meta": {"level": 3}},
]


@pytest.fixture
def qa_rows() -> list[dict]:
    return json.loads(json.dumps(QA))


def write_qa(tmp_path: Path, with_hf: bool = True) -> dict[str, str]:
    """The QA records in every format under `tmp_path`: {source name: file name}."""
    t = pa.Table.from_pylist(QA)
    (tmp_path / "qa.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in QA).encode()))
    pq.write_table(t, tmp_path / "qa.parquet")
    with pa.OSFile(str(tmp_path / "qa_file.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    with pa.OSFile(str(tmp_path / "qa_stream.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t)
    with open(tmp_path / "qa.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["qid", "question", "answer"])
        w.writeheader()
        for r in QA:
            w.writerow({k: r[k] for k in ("qid", "question", "answer")})
    names = {"zst": "qa.jsonl.zst", "parquet": "qa.parquet", "arrowfile": "qa_file.arrow",
             "arrowstream": "qa_stream.arrow", "csv": "qa.csv"}
    if with_hf:
        import datasets  # slow to import: only the tests that read a saved dataset pay for it

        datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "qa_hf"))
        names["hf"] = "qa_hf"
    return names


@pytest.fixture
def qa_files(tmp_path) -> dict[str, str]:
    """The QA records in every format, `datasets` on disk included."""
    return write_qa(tmp_path)


@pytest.fixture
def qa_files_no_hf(tmp_path) -> dict[str, str]:
    """The QA records in every format except `datasets` (which is slow to import)."""
    return write_qa(tmp_path, with_hf=False)


@pytest.fixture
def read_source(tmp_path):
    """read_source(source mapping, batch_rows=4096) -> (rows, quarantined rows), read by
    `plan_reads` + `read_task` alone (no pipeline); paths are relative to tmp_path."""

    def read(source: dict, batch_rows: int = 4096) -> tuple[list[dict], list[dict]]:
        recipe = validate_recipe({"sources": [source]}, base_dir=str(tmp_path))
        tasks, _ = plan_reads(recipe, with_hashes=False)
        good: list[dict] = []
        bad: list[dict] = []
        for task in tasks:
            for batch, q in read_task(task, batch_rows):
                if batch is not None:
                    good += batch.to_pylist()
                if q is not None:
                    bad += q.to_pylist()
        return good, bad

    return read


@pytest.fixture
def shard_rows():
    """shard_rows(out_dir) -> every row of a published run, sorted by (source, source_row)."""

    def rows_of(out: Path) -> list[dict]:
        m = load_manifest(str(out))
        rows = [r for p in shard_paths(str(out), m) for r in read_shard(p).to_pylist()]
        return sorted(rows, key=lambda r: (r["source"], r["source_row"]))

    return rows_of
