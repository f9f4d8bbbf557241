"""Across formats: the same records give the same rows, ids and provenance; planning names
every unusable input before any work; the reader registry covers every format."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import run_recipe
from thresher.cli import app
from thresher.core import rows
from thresher.core.errors import RecipeError
from thresher.io.ingest import InputError, plan_reads, read_task
from thresher.io.readers import READERS
from thresher.io.records import normalize_text, rename_extra
from thresher.recipe.load import validate_recipe
from thresher.recipe.schema import FORMATS, Normalize

TEMPLATE = "Q: {question}\nA: {answer}"


def _source(name: str, path: str, **kw) -> dict:
    return {"name": name, "paths": [path], **kw}


def _check_qa_rows(by_source: dict[str, list[dict]], names: dict[str, str]) -> None:
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


@pytest.mark.slow
def test_each_format_reads_the_same_rows(tmp_path, qa_files, shard_rows):
    recipe = {
        "sources": [_source(n, p, text_template=TEMPLATE, id_field="qid",
                            normalize={"fold_whitespace": True}) for n, p in qa_files.items()],
        "output": {"dir": "out"},
    }
    res = run_recipe(recipe, tmp_path)
    by_source: dict[str, list] = {}
    for r in shard_rows(Path(res.out_dir)):
        by_source.setdefault(r["source"], []).append(r)
    _check_qa_rows(by_source, qa_files)


def test_each_reader_gives_the_same_rows(qa_files_no_hf, read_source):
    """The same check as above, on the readers alone (the fast loop's version)."""
    by_source = {}
    for n, p in qa_files_no_hf.items():
        got, bad = read_source(_source(n, p, text_template=TEMPLATE, id_field="qid",
                                       normalize={"fold_whitespace": True}))
        assert bad == []
        by_source[n] = got
    _check_qa_rows(by_source, qa_files_no_hf)
    # Every reader gives the canonical columns first, then the kept fields, then __row_key.
    for n, got in by_source.items():
        assert list(got[0])[:5] == rows.CANONICAL_NAMES and list(got[0])[-1] == rows.ROW_KEY, n


def test_readers_cover_every_format():
    assert set(READERS) == set(FORMATS)


@pytest.mark.slow
def test_content_hash_id_is_stable_and_keep_fields_filters(tmp_path, qa_rows, shard_rows):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows))
    recipe = {"sources": [_source("a", "a.jsonl", text_field="question", keep_fields=["answer"])],
              "output": {"dir": "out"}}
    rows1 = shard_rows(Path(run_recipe(recipe, tmp_path).out_dir))
    recipe["output"]["dir"] = "out2"
    rows2 = shard_rows(Path(run_recipe(recipe, tmp_path).out_dir))
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2]
    assert all(len(r["id"]) == 16 for r in rows1)
    assert set(rows1[0]) == {"id", "text", "source", "source_file", "source_row", "answer"}


def test_content_hash_id_and_keep_fields_on_the_readers(tmp_path, qa_rows, read_source):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({**r, "source": "web"}) + "\n" for r in qa_rows))
    rows1, _ = read_source(_source("a", "a.jsonl", text_field="question", keep_fields=["answer"]))
    rows2, _ = read_source(_source("a", "a.jsonl", text_field="question", keep_fields=["answer"]), batch_rows=1)
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2] and all(len(r["id"]) == 16 for r in rows1)
    assert set(rows1[0]) == {"id", "text", "source", "source_file", "source_row", "answer", rows.ROW_KEY}
    # A field named like a canonical column is kept under orig_<name>, the source's name wins.
    clash, _ = read_source(_source("b", "b.jsonl", text_field="question"))
    assert rename_extra("source") == "orig_source" and rename_extra("answer") == "answer"
    assert clash[0]["source"] == "b" and clash[0]["orig_source"] == "web"


def test_row_key_is_file_index_and_row(tmp_path, qa_rows):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows))
    recipe = validate_recipe({"sources": [{"name": "s", "paths": ["*.jsonl"], "text_field": "question"}]},
                             base_dir=str(tmp_path))
    for offset in (0, 1 << 20):
        tasks, inputs = plan_reads(recipe, file_offset=offset, with_hashes=True)
        assert [t.file_index for t in tasks] == [offset, offset + 1]
        assert [Path(i.path).name for i in inputs] == ["a.jsonl", "b.jsonl"]
        assert all(len(i.sha256) == 64 for i in inputs)
        for t in tasks:
            (batch, _q), = read_task(t, 100)
            keys = batch.column(rows.ROW_KEY).to_pylist()
            assert keys == [(t.file_index << rows.ROW_KEY_FILE_SHIFT) | n for n in (1, 2, 3)]


def test_normalize_text_composes_strips_and_folds():
    arr = pa.array(["Cafe\u0301\u0007 \t menu\n", None])
    assert normalize_text(arr, Normalize()).to_pylist() == ["Caf\u00e9 \t menu\n", None]
    assert normalize_text(arr, Normalize(fold_whitespace=True)).to_pylist() == ["Caf\u00e9 menu", None]
    assert normalize_text(arr, Normalize(nfc=False, strip_control=False)).to_pylist() == arr.to_pylist()


def test_planning_lists_every_unusable_input_at_once(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "data.txt").write_text("hello\n")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    (tmp_path / "ok.jsonl").write_text('{"text": "fine"}\n')
    recipe = validate_recipe({"sources": [
        _source("unknown", "data.txt"), _source("nofield", "p.parquet"), _source("missing", "gone.jsonl"),
        _source("ok", "ok.jsonl"),
    ]}, base_dir=str(tmp_path))
    with pytest.raises(InputError) as exc:
        plan_reads(recipe)
    p = exc.value.problems
    assert len(p) == 3
    assert p[0].startswith("sources.unknown: cannot tell the format of") and "data.txt" in p[0]
    assert p[1].startswith("sources.nofield: ") and "no field 'text' (fields: ['body'])" in p[1]
    assert p[2].startswith("sources.missing.paths: file not found:")


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
    p = _problems({"sources": [{"name": "a", "paths": ["x"]}],
                   "stages": [{"type": "exact_dedup", "params": {"buckets": -1}}]}, tmp_path)
    assert p == ["stages.0.params.buckets: Input should be greater than 0 (got -1)"]
    p = _problems({"sources": [{"name": "a", "paths": ["x"]}], "stages": [{"type": "dedupe"}]}, tmp_path)
    assert p[0].startswith("stages.0.type: unknown stage type 'dedupe'; known types:")


@pytest.mark.slow
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
