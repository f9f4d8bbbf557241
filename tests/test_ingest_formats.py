"""Every input format, text templates, ids, normalisation, and errors before any work."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
import zstandard
from typer.testing import CliRunner

from tests.conftest import run_recipe
from thresher.cli import app
from thresher.load import load_manifest, read_shard
from thresher.core.errors import RecipeError
from thresher.recipe.load import validate_recipe

DEMO = Path(__file__).resolve().parents[1] / "thresher" / "data" / "demo"

QA = [
    {"qid": 1, "question": "What is 2 + 3?", "answer": "5", "meta": {"level": 1}},
    {"qid": 2, "question": "Name the capital of France.", "answer": "Paris", "meta": {"level": 2}},
    {"qid": 3, "question": "Cafe\u0301 menu\u0007 price?", "answer": "4 euros", "meta": {"level": 3}},
]


def _all_rows(out: Path) -> list[dict]:
    m = load_manifest(str(out))
    rows = [r for s in m["shards"] for r in read_shard(str(out / s["path"])).to_pylist()]
    return sorted(rows, key=lambda r: (r["source"], r["source_row"]))


def _source(name: str, path: str, **kw) -> dict:
    return {"name": name, "paths": [path], **kw}


def test_each_format_reads_the_same_rows(tmp_path):
    import datasets
    import pyarrow.parquet as pq

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
    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "qa_hf"))

    template = "Q: {question}\nA: {answer}"
    names = {"zst": "qa.jsonl.zst", "parquet": "qa.parquet", "arrowfile": "qa_file.arrow",
             "arrowstream": "qa_stream.arrow", "csv": "qa.csv", "hf": "qa_hf"}
    recipe = {
        "sources": [_source(n, p, text_template=template, id_field="qid",
                            normalize={"fold_whitespace": True}) for n, p in names.items()],
        "output": {"dir": "out"},
    }
    res = run_recipe(recipe, tmp_path)
    rows = _all_rows(Path(res.out_dir))
    by_source: dict[str, list] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == set(names)
    for name, got in by_source.items():
        assert [r["id"] for r in got] == ["1", "2", "3"], name
        # Template rendered, NFC applied (e + combining accent -> é), control char removed.
        assert got[2]["text"] == "Q: Café menu price? A: 4 euros", name
        assert got[0]["answer"] == "5" and got[0]["question"] == "What is 2 + 3?", name
    # Row numbers: 1-based lines for text formats, 0-based rows for columnar ones.
    assert [r["source_row"] for r in by_source["zst"]] == [1, 2, 3]
    assert [r["source_row"] for r in by_source["csv"]] == [2, 3, 4]
    assert [r["source_row"] for r in by_source["parquet"]] == [0, 1, 2]
    # Nested fields survive from JSON sources.
    assert by_source["zst"][0]["meta"] == {"level": 1}


def test_content_hash_id_is_stable_and_keep_fields_filters(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA))
    recipe = {"sources": [_source("a", "a.jsonl", text_field="question", keep_fields=["answer"])],
              "output": {"dir": "out"}}
    rows1 = _all_rows(Path(run_recipe(recipe, tmp_path).out_dir))
    recipe["output"]["dir"] = "out2"
    rows2 = _all_rows(Path(run_recipe(recipe, tmp_path).out_dir))
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2]
    assert all(len(r["id"]) == 16 for r in rows1)
    assert set(rows1[0]) == {"id", "text", "source", "source_file", "source_row", "answer"}


def test_columnar_null_text_is_quarantined(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["fine", None, "also fine", ""]}), tmp_path / "t.parquet")
    res = run_recipe({"sources": [_source("t", "t.parquet", max_bad_fraction=0.6)], "output": {"dir": "out"}}, tmp_path)
    assert res.counters["read/t"] == 4 and res.counters["quarantined/t"] == 2 and res.counters["written/t"] == 2
    q = read_shard(str(Path(res.out_dir) / res.quarantine[0]["path"])).to_pylist()
    assert [(r["source_row"], r["reason"]) for r in q] == [(1, "missing text field 'text'"), (3, "empty text")]


def _problems(recipe: dict, base: Path) -> list[str]:
    with pytest.raises(RecipeError) as exc:
        validate_recipe(recipe, base_dir=str(base))
    return exc.value.problems


def test_invalid_recipes_name_the_key_path(tmp_path):
    assert _problems({"sources": []}, tmp_path) == ["sources: List should have at least 1 item after validation, not 0"]
    p = _problems({"sources": [{"name": "a", "paths": ["x"]}], "output": {"shard_max_rows": 0}}, tmp_path)
    assert p == ["output.shard_max_rows: Input should be greater than 0 (got 0)"]
    p = _problems({"sources": [{"name": "a", "paths": ["x"], "txt_field": "t"}]}, tmp_path)
    assert p == ["sources.0.txt_field: Extra inputs are not permitted (got 't')"]
    p = _problems({"sources": [{"name": "a", "paths": ["x"]}], "stages": [{"type": "exact_dedup", "params": {"buckets": -1}}]}, tmp_path)
    assert p == ["stages.0.params.buckets: Input should be greater than 0 (got -1)"]
    p = _problems({"sources": [{"name": "a", "paths": ["x"]}], "stages": [{"type": "dedupe"}]}, tmp_path)
    assert p[0].startswith("stages.0.type: unknown stage type 'dedupe'; known types:")


def test_cli_validate_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sources": [{"name": "a", "paths": ["missing.jsonl"]}],
                                   "output": {"compression": "gzip"}}))
    res = CliRunner().invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "output.compression" in res.output and "'none', 'lz4' or 'zstd'" in res.output

    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"sources": [{"name": "a", "paths": ["missing.jsonl"]}]}))
    res = CliRunner().invoke(app, ["validate", str(missing)])
    assert res.exit_code == 2 and "file not found" in res.output and "missing.jsonl" in res.output

    (tmp_path / "data.txt").write_text("hello\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"sources": [{"name": "a", "paths": ["data.txt"]}]}))
    res = CliRunner().invoke(app, ["run", str(unknown), "--no-prefect"])
    assert res.exit_code == 2 and "cannot tell the format" in res.output
    assert not (tmp_path / "out").exists()  # nothing ran

    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    nofield = tmp_path / "nofield.yaml"
    nofield.write_text(yaml.safe_dump({"sources": [{"name": "p", "paths": ["p.parquet"]}]}))
    res = CliRunner().invoke(app, ["validate", str(nofield)])
    assert res.exit_code == 2 and "no field 'text'" in res.output and "p.parquet" in res.output

    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"sources": [{"name": "p", "paths": ["p.parquet"], "text_field": "body"}]}))
    res = CliRunner().invoke(app, ["validate", str(ok)])
    assert res.exit_code == 0 and "valid" in res.output


def test_truncated_gzip_is_quarantined_not_fatal(tmp_path):
    good = "".join(json.dumps({"text": f"row {i} " * 20}) + "\n" for i in range(2000)).encode()
    data = gzip.compress(good)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    res = run_recipe({"sources": [_source("c", "cut.jsonl.gz", max_bad_fraction=0.01)], "output": {"dir": "out"}}, tmp_path)
    assert res.counters["unreadable_files/c"] == 1
    q = read_shard(str(Path(res.out_dir) / res.quarantine[0]["path"])).to_pylist()
    assert q[-1]["reason"].startswith("file unreadable") and q[-1]["source_row"] == -1
    assert 0 < res.counters["written/c"] < 2000


def test_block_json_parser_and_per_line_path_give_identical_shards(tmp_path, monkeypatch):
    from tests.conftest import demo_pool_rows
    from thresher.load import shard_paths
    from thresher.io import ingest

    rows = [dict(r, n=i if i % 3 else i + 0.5, meta={"k": [i, i + 1], "tag": r["source"]},
                 day=f"2021-03-{1 + i % 28:02d}") for i, r in enumerate(demo_pool_rows(600))]
    lines = [json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(rows)]
    (tmp_path / "clean.jsonl").write_text("\n".join(lines[:300]) + "\n")   # `day` looks like dates
    (tmp_path / "gaps.jsonl").write_text("\n".join(lines[300:400]) + "\n\n  \n" + "\n".join(lines[400:]) + "\n")
    (tmp_path / "plain.jsonl").write_text("\n".join(json.dumps({k: r[k] for k in ("id", "text", "n", "meta")})
                                                    for r in rows[:200]) + "\n")
    recipe = {"sources": [{"name": "s", "paths": ["clean.jsonl", "gaps.jsonl", "plain.jsonl"], "id_field": "id"}],
              "output": {"dir": "fast"}}
    parsed = []
    real_parse = ingest._parse_json_block
    monkeypatch.setattr(ingest, "_parse_json_block",
                        lambda *a: parsed.append(real_parse(*a)) or parsed[-1])
    fast = run_recipe(recipe, tmp_path)
    # plain.jsonl went through the block parser; the date-like string and the blank lines did not.
    assert sorted(t is not None for t in parsed) == [False, False, True]
    monkeypatch.setattr(ingest, "FAST_JSON", False)
    recipe["output"]["dir"] = "slow"
    slow = run_recipe(recipe, tmp_path)
    assert [s["sha256"] for s in fast.shards] == [s["sha256"] for s in slow.shards]
    out = _all_rows(Path(fast.out_dir))
    gaps = [r for r in out if r["source_file"].endswith("gaps.jsonl")]
    assert [r["source_row"] for r in gaps] == list(range(1, 101)) + list(range(103, 303))  # blank lines counted
    assert {r["day"] for r in out if r["day"] is not None} == {f"2021-03-{d:02d}" for d in range(1, 29)}  # strings stay strings
    plain = [r for r in out if r["source_file"].endswith("plain.jsonl")]
    assert len(plain) == 200 and plain[0]["meta"]["k"] == [0, 1]
