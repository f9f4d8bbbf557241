"""`output.write_dropped` with stages whose internal columns differ (DSIR's features): every
dropped row lands in `dropped/` once, with its stage and reason, and no internal column.
(Before the stage template stripped internal columns, this run failed in the dropped writer.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import DEMO_DATA, run_recipe
from thresher.load import load_manifest, read_shard

pytestmark = pytest.mark.slow


def test_dropped_rows_from_every_stage_are_written_once(tmp_path: Path):
    recipe = {
        "seed": 3,
        "sources": [{"name": "pool", "paths": [str(DEMO_DATA / "pool_sample.jsonl.gz")], "id_field": "id"}],
        "stages": [
            {"type": "exact_dedup"},
            {"type": "ngram_features", "params": {"num_buckets": 1000}},
            {"type": "importance_resample", "params": {
                "target": [{"name": "math", "paths": [str(DEMO_DATA / "math_target.jsonl.gz")]}],
                "k": 300, "num_buckets": 1000}},
        ],
        "output": {"dir": str(tmp_path / "out"), "write_dropped": True},
        "batch_rows": 500,
    }
    run = run_recipe(recipe, tmp_path)
    m = load_manifest(run.out_dir)
    dropped = pa.concat_tables([read_shard(f"{run.out_dir}/{d['path']}") for d in m["dropped"]])
    by_stage = Counter(zip(dropped.column("drop_stage").to_pylist(), dropped.column("drop_reason").to_pylist(),
                           strict=True))
    assert by_stage == {(st, r): n for st, s in m["stages"].items() for r, n in s["dropped"].items()}
    assert by_stage[("importance_resample", "not_selected")] > 0 and by_stage[("exact_dedup", "duplicate")] > 0
    assert not [c for c in dropped.column_names if c.startswith("__")]
    assert dropped.num_rows + m["num_rows"] + m["counts"]["total"]["quarantined"] == m["counts"]["total"]["read"]
    where = set(zip(dropped.column("source_file").to_pylist(), dropped.column("source_row").to_pylist(), strict=True))
    assert len(where) == dropped.num_rows  # each input row at most once
