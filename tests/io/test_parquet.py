"""Parquet: one read task per row group, rows numbered over the whole file, null and empty
texts quarantined, a missing or non-string text field refused before the run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_recipe
from thresher.io.ingest import InputError, plan_reads
from thresher.load import read_shard
from thresher.recipe.load import validate_recipe


@pytest.mark.slow
def test_columnar_null_text_is_quarantined(tmp_path):
    pq.write_table(pa.table({"text": ["fine", None, "also fine", ""]}), tmp_path / "t.parquet")
    res = run_recipe({"sources": [{"name": "t", "paths": ["t.parquet"], "max_bad_fraction": 0.6}],
                      "output": {"dir": "out"}}, tmp_path)
    assert res.counters["read/t"] == 4 and res.counters["quarantined/t"] == 2 and res.counters["written/t"] == 2
    q = read_shard(str(Path(res.out_dir) / res.quarantine[0]["path"])).to_pylist()
    assert [(r["source_row"], r["reason"]) for r in q] == [(1, "missing text field 'text'"), (3, "empty text")]


def test_null_and_empty_texts_are_quarantined_on_the_reader(tmp_path, read_source):
    pq.write_table(pa.table({"text": ["fine", None, "also fine", ""]}), tmp_path / "t.parquet")
    good, bad = read_source({"name": "t", "paths": ["t.parquet"]})
    assert [(r["source_row"], r["text"]) for r in good] == [(0, "fine"), (2, "also fine")]
    assert [(r["source_row"], r["reason"], r["field"]) for r in bad] == [
        (1, "missing text field 'text'", "text"), (3, "empty text", "text")]
    assert bad[1]["raw"] == b'{"text":""}'  # a columnar row is kept as JSON


def test_one_task_per_row_group_rows_numbered_over_the_file(tmp_path, read_source):
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(300)], "id": list(range(300))}),
                   tmp_path / "rg.parquet", row_group_size=128)
    recipe = validate_recipe({"sources": [{"name": "rg", "paths": ["rg.parquet"]}]}, base_dir=str(tmp_path))
    tasks, inputs = plan_reads(recipe)
    assert [t.part for t in tasks] == [0, 1, 2] and len({t.file_index for t in tasks}) == 1 and len(inputs) == 1
    good, _ = read_source({"name": "rg", "paths": ["rg.parquet"], "id_field": "id"}, batch_rows=50)
    assert [r["source_row"] for r in good] == list(range(300))
    assert [r["id"] for r in good] == [str(i) for i in range(300)]


def test_missing_or_non_string_text_field_is_refused_before_the_run(tmp_path):
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), tmp_path / "p.parquet")
    for kw, want in [({}, "no field 'text' (fields: ['body', 'n'])"),
                     ({"text_field": "n"}, "text field 'n' has type int64, not string; use `text_template`"),
                     ({"text_template": "{body} {missing}"}, "no field 'missing'")]:
        recipe = validate_recipe({"sources": [{"name": "p", "paths": ["p.parquet"], **kw}]}, base_dir=str(tmp_path))
        with pytest.raises(InputError) as exc:
            plan_reads(recipe)
        (problem,) = exc.value.problems
        assert problem.startswith("sources.p: ") and want in problem, problem
