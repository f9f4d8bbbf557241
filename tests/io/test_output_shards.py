"""The `output:` shaping keys: `num_shards` (balanced cut), `columns`/`drop_columns`, relative
`source_file`, Parquet shards, the plan-time checks and the dataset card."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import DEMO_DATA
from thresher.core.errors import RecipeError, UserError
from thresher.engine.plan import make_plan
from thresher.io import dataset_card
from thresher.io.shard_files import ShardSpec, relative_source_file, select_columns, write_parquet
from thresher.io.shards import WriteShards, cut_pieces, shard_bounds
from thresher.load import read_shard, reader_plan
from thresher.recipe.load import validate_recipe


def _cut_all(counts: dict[int, int], n: int) -> dict[int, list[tuple[int, int]]]:
    """Run the shard cut over partitions holding row numbers; -> shard: [(partition, row)]."""
    start, out = 0, {}
    for p in sorted(counts):
        table = pa.table({"g": np.arange(start, start + counts[p])})
        start += counts[p]
        for j, (part, piece) in cut_pieces((p, table), counts, n):
            out.setdefault(j, []).extend((part, g) for g in piece.column("g").to_pylist())
    return out


@pytest.mark.parametrize("counts,n", [({0: 10, 1: 0, 2: 7, 5: 13}, 4), ({0: 3}, 5), ({1: 6, 2: 1}, 1),
                                      ({0: 1000, 1: 1, 2: 999}, 7)])
def test_cut_gives_n_contiguous_shards_within_one_row(counts, n):
    total = sum(counts.values())
    shards = _cut_all(counts, n)
    sizes = [len(shards.get(j, [])) for j in range(n)]
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1
    assert sizes == np.diff(shard_bounds(total, n)).tolist()
    # Shard j holds exactly the global rows [floor(j*T/n), floor((j+1)*T/n)), in order.
    for j in range(n):
        assert [g for _, g in shards.get(j, [])] == list(range(total * j // n, total * (j + 1) // n))


def test_relative_source_file_and_columns():
    t = pa.table({"id": ["a", "b", "c"], "source_file": ["/data/x/a.jsonl", "/data/y.jsonl", "<memory>"],
                  "n": [1, 2, 3]})
    rel = relative_source_file(t, "/data/x")
    assert rel.column("source_file").to_pylist() == ["a.jsonl", "../y.jsonl", "<memory>"]
    assert relative_source_file(t, None).equals(t)
    assert select_columns(t, ("n", "id"), ()).column_names == ["n", "id"]
    assert select_columns(t, None, ("n",)).column_names == ["id", "source_file"]
    with pytest.raises(UserError, match="no column 'nope'"):
        select_columns(t, ("id", "nope"), ())


def test_parquet_bytes_are_deterministic_with_row_groups(tmp_path: Path):
    t = pa.table({"id": [str(i) for i in range(250)], "x": list(range(250))})
    a = write_parquet(str(tmp_path / "a.parquet"), t, 100)
    # The same rows in other chunks (as a shard joins partition pieces): the same bytes.
    b = write_parquet(str(tmp_path / "b.parquet"), pa.concat_tables([t.slice(0, 37), t.slice(37)]), 100)
    assert a == b == hashlib.sha256((tmp_path / "a.parquet").read_bytes()).hexdigest()
    md = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [100, 100, 50]
    assert b"ARROW:schema" in md.metadata and not {k for k in md.metadata if b"time" in k.lower()}


def _recipe(tmp_path: Path, **output) -> dict:
    return {"sources": [{"name": "pool", "paths": [str(DEMO_DATA / "math_sample.parquet")], "id_field": "id"}],
            "output": {"dir": str(tmp_path / "out"), **output}}


def test_plan_time_output_checks(tmp_path: Path):
    with pytest.raises(RecipeError, match=r"no column \['nope'\] in the sources"):
        make_plan(validate_recipe(_recipe(tmp_path, columns=["id", "nope"]), base_dir=str(tmp_path)))
    with pytest.raises(RecipeError, match="needs token ids: add a `- type: tokenize` stage"):
        make_plan(validate_recipe(_recipe(tmp_path, pack={"seq_len": 64}), base_dir=str(tmp_path)))
    for bad, msg in [({"columns": ["id", "id"]}, "named twice"), ({"columns": ["id"], "drop_columns": ["id"]},
                                                                    "in both"),
                     ({"drop_columns": ["__row_key"]}, "pipeline-internal"), ({"columns": []}, "empty")]:
        with pytest.raises(RecipeError, match=msg):
            validate_recipe(_recipe(tmp_path, **bad), base_dir=str(tmp_path))
    plan = make_plan(validate_recipe(_recipe(tmp_path, columns=["text", "id"], drop_columns=["source_row"]),
                                     base_dir=str(tmp_path)))
    assert plan.recipe.output.columns == ["text", "id"]


def test_dataset_card_lists_exactly_the_shards_and_spares_a_foreign_readme(tmp_path: Path, caplog):
    m = {"name": "r", "snapshot": "S1", "shards": [{"path": "shards/part-00000-00000.arrow"},
                                                   {"path": "shards/part-00000-00001.arrow"}],
         "recipe": {"output": {"format": "arrow", "num_shards": 2}}, "num_rows": 3}
    path = dataset_card.write_card(str(tmp_path), m, prefix="snapshots/S1/")
    text = Path(path).read_text()
    import yaml

    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": [
        "snapshots/S1/shards/part-00000-00000.arrow", "snapshots/S1/shards/part-00000-00001.arrow"]}]
    assert dataset_card.MARKER in text
    assert dataset_card.write_card(str(tmp_path), {**m, "snapshot": "S2"}, prefix="snapshots/S2/")  # ours: rewritten
    (tmp_path / "README.md").write_text("# my notes\n")
    with caplog.at_level(logging.WARNING, logger="thresher.card"):
        assert dataset_card.write_card(str(tmp_path), m) is None
    assert (tmp_path / "README.md").read_text() == "# my notes\n"
    assert len([r for r in caplog.records if "not written by thresher" in r.message]) == 1


# ---------------------------------------------------------------------------------------
# In a Beam pipeline (whole runs: tests/io/test_readers_out.py)


@pytest.mark.slow
def test_balanced_shard_bytes_do_not_depend_on_partitions(tmp_path: Path):
    import apache_beam as beam

    from thresher.testing.harness import make_batch

    # With num_shards the global order is cut, not each partition's: any partition count
    # gives the same shards, byte for byte.
    rows = [{"id": f"r{i}", "text": f"row {i}", "x": i} for i in range(103)]
    digests = []
    for parts in (1, 5):
        out = tmp_path / f"p{parts}"
        with beam.Pipeline(runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner") as p:
            _ = (p | beam.Create([make_batch(rows[:60]), make_batch(rows[60:], first_key=60)])
                 | WriteShards(str(out), str(out / "_work"), partitions=parts, seed=1,
                               spec=ShardSpec(num_shards=4, chunk_rows=16)))
        files = sorted((out / "shards").iterdir())
        assert [f.name for f in files] == [f"part-00000-{j:05d}.arrow" for j in range(4)]
        assert [read_shard(str(f)).num_rows for f in files] == [25, 26, 26, 26]
        digests.append([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    assert digests[0] == digests[1]


@pytest.mark.parametrize("rows,readers", [([100, 100, 100, 100], 4), ([100, 100, 100, 100], 2), ([200, 200], 4),
                                          ([5, 0, 7, 3], 3), ([3], 4), ([], 2)])
def test_reader_plan_reads_every_row_once(rows, readers):
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    got = []
    shares = []
    for k in range(readers):
        plan = reader_plan(rows, k, readers)
        share = [int(starts[i]) + r for i, a, b in plan for r in range(a, b)]
        shares.append(len(share))
        got += share
    assert sorted(got) == list(range(sum(rows)))
    assert max(shares) - min(shares) <= (max(rows) if rows and len(rows) % readers == 0 else 1)
    if rows and len(rows) % readers == 0:  # whole shards: no shard opened by two readers
        assert all(a == 0 and b == rows[i] for k in range(readers) for i, a, b in reader_plan(rows, k, readers))


def test_spec_packs_then_selects_columns_with_relative_paths():
    t = pa.table({"id": ["a", "b", "c"], "source_file": ["/r/x.jsonl"] * 3,
                  "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]})
    spec = ShardSpec(pack={"seq_len": 4, "method": "greedy", "pad_id": 0}, columns=("input_ids", "doc_ids"),
                     base_dir="/r")
    out = spec.finish(t)
    assert out.column_names == ["input_ids", "doc_ids"]
    assert out.column("input_ids").to_pylist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert out.column("doc_ids").to_pylist() == [["a", "b"], ["b", "c"], ["c"]]
    assert ShardSpec(base_dir="/r").finish(t).column("source_file").to_pylist() == ["x.jsonl"] * 3


def test_pack_columns_are_checked_at_plan_time(tmp_path: Path):
    recipe = _recipe(tmp_path, pack={"seq_len": 64}, columns=["input_ids", "text"])
    recipe["stages"] = [{"type": "tokenize", "params": {"tokenizer": "minilm"}}]
    with pytest.raises(RecipeError, match=r"\['text'\] are not packed columns"):
        make_plan(validate_recipe(recipe, base_dir=str(tmp_path)))
