"""`output.splits`: rows split by a seeded hash of their id, a shard folder per split, a dataset
card that names each split, loaders that read one split."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from tests.conftest import demo_pool_rows, run_recipe
from thresher.io.splits import split_index
from thresher.recipe.output import Output


def test_split_index_is_a_stable_seeded_function_of_the_id():
    ids = pa.array([f"row-{i}" for i in range(20_000)])
    idx = split_index(ids, [0.9, 0.1], seed=3)
    assert set(np.unique(idx)) == {0, 1} and abs((idx == 1).mean() - 0.1) < 0.01
    # per id, not per position or batch: any slice gives the same splits
    assert (split_index(ids.slice(5_000, 100), [0.9, 0.1], 3) == idx[5_000:5_100]).all()
    assert (split_index(ids, [0.9, 0.1], 4) != idx).any()  # the seed matters
    three = split_index(ids, [0.5, 0.25, 0.25], 3)
    assert [abs((three == k).mean() - f) < 0.015 for k, f in enumerate([0.5, 0.25, 0.25])] == [True] * 3


@pytest.mark.parametrize("splits,msg", [({"train": 0.9}, "sum to 0.9"), ({"train": 1.0, "x": 0.0}, "above 0"),
                                        ({"1st": 1.0}, "use a letter"), ({}, "empty")])
def test_bad_splits_are_recipe_errors(splits, msg):
    with pytest.raises(ValidationError, match=msg):
        Output(splits=splits)


@pytest.mark.slow
def test_splits_on_a_run_load_by_name(tmp_path):
    import datasets

    from thresher.load import TorchShards, load_hf, load_manifest, shard_paths

    rows = demo_pool_rows(400)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "splits", "seed": 1, "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
              "output": {"dir": "out", "splits": {"train": 0.8, "validation": 0.2}, "num_shards": 2}}
    run_recipe(recipe, tmp_path)
    out = str(tmp_path / "out")
    m = load_manifest(out)
    assert sorted({s["split"] for s in m["shards"]}) == ["train", "validation"]
    assert [s["path"].rsplit("/", 1)[0] for s in m["shards"]] == ["shards/train"] * 2 + ["shards/validation"] * 2
    assert m["splits"]["train"] + m["splits"]["validation"] == m["num_rows"] == len(rows)
    assert m["counts"]["total"]["written"] == len(rows)
    train, val = load_hf(out, split="train"), load_hf(out, split="validation")
    assert (len(train), len(val)) == (m["splits"]["train"], m["splits"]["validation"])
    assert set(train["id"]).isdisjoint(val["id"]) and set(train["id"]) | set(val["id"]) == {r["id"] for r in rows}
    # each id's split is the seeded hash's, whatever batch it came in
    want = split_index(pa.array(val["id"]), [0.8, 0.2], 1)
    assert (want == 1).all() and 0.1 < len(val) / len(rows) < 0.3
    dd = datasets.load_dataset(out)  # the card names both splits
    assert {k: len(v) for k, v in dd.items()} == m["splits"]
    assert sum(1 for _ in TorchShards(out, split="validation", rank=0, world_size=1)) == len(val)
    assert len(shard_paths(out)) == 4
    with pytest.raises(ValueError, match="splits are train, validation"):
        shard_paths(out, split="test")
