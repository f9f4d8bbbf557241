"""`semantic_dedup`: planted near-duplicates of real general_pool rows go, distinct rows stay."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from tests._general_pool import short_rows, write_jsonl
from tests.conftest import run_recipe
from thresher.stages.features import embed
from thresher.recipe.schema import RecipeError
from thresher.stages.dedup.semantic_dedup import _dedup_cluster, greedy_dedup


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_rows_are_compared_with_kept_rows_only():
    # A~B and B~C are near-duplicates, A and C are not: B goes, C stays (NeMo would drop C too).
    a, c = _unit([1, 0, 0]), _unit([0.6, 0.8, 0])
    b = _unit(a + c)
    keep, best, at = greedy_dedup(np.stack([a, b, c]), threshold=0.85)
    assert keep.tolist() == [True, False, True]
    assert at.tolist() == [-1, 0, 0]  # B duplicates A; C's closest *kept* row is A
    np.testing.assert_allclose(best[1:], [a @ b, a @ c], rtol=1e-6)


def test_blocked_walk_matches_a_brute_force_walk():
    rng = np.random.default_rng(0)
    base = _unit(rng.standard_normal((80, 16)))
    near = _unit(base[:40] + 0.1 * rng.standard_normal((40, 16)))
    v = np.concatenate([base, near])[rng.permutation(120)]
    want = []
    for i in range(len(v)):
        kept = [j for j, k in enumerate(want[:i]) if k]
        want.append(not any(v[j] @ v[i] > 0.9 for j in kept))
    for block in (7, 1024):  # rows walked across block boundaries and within one block
        keep, _, _ = greedy_dedup(v, 0.9, block=block)
        assert keep.tolist() == want
    assert 0 < len(want) - sum(want) <= 40


@pytest.mark.parametrize("rule, kept", [("first", "k1"), ("hard", "k2"), ("easy", "k1")])
def test_keep_rule_picks_the_survivor(rule, kept):
    v = _unit([[1, 0.01], [1, 0.0]])
    # row key 1 is the first row; row key 2 lies farther from the centroid (similarity 0.9 vs 0.95)
    part = (np.array([1, 2], np.uint64), np.array(["k1", "k2"], object), v, np.array([0.95, 0.9], np.float32))
    out = next(_dedup_cluster((0, [part]), 0.99, rule))
    assert out["dropped"] == 1 and list(out["dup_of"]) == [kept]


def test_semantic_dedup_without_an_embed_stage_is_a_recipe_error(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    recipe = {"sources": [{"name": "s", "paths": ["in.jsonl"]}],
              "stages": [{"type": "semantic_dedup"}, {"type": "embed"}], "output": {"dir": "out"}}
    with pytest.raises(RecipeError, match="no `embed` stage before it"):
        run_recipe(recipe, tmp_path)


def _edit(text: str, i: int) -> str:
    words = text.split()
    if i % 2:
        return text + " Read more on our website."
    del words[len(words) // 2]  # one word dropped from the middle
    return " ".join(words)


def _read(out_dir, infos):
    tables = [pa.ipc.open_stream(open(os.path.join(out_dir, s["path"]), "rb")).read_all() for s in infos]
    return pa.concat_tables(tables, promote_options="permissive")


def test_planted_near_duplicates_are_dropped_and_distinct_rows_kept(shared_data, tmp_path):
    rows = short_rows(shared_data, 150)
    sources = rows[::10][:12]
    planted = [{"id": f"planted-{i}", "text": _edit(r["text"], i)} for i, r in enumerate(sources)]
    origin = {p["id"]: r["id"] for p, r in zip(planted, sources)}
    # Planted rows come last, so with keep: first the original is the row kept.
    write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows] + planted)
    eps = 0.1
    # Two passes: k-means with 3 clusters (a near-copy pair split across clusters survives it:
    # SemDeDup's known price), then one cluster, i.e. every remaining pair compared.
    recipe = {
        "seed": 7,
        "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
        "stages": [{"type": "embed"},
                   {"type": "semantic_dedup", "name": "k3", "params": {"eps": eps, "n_clusters": 3}},
                   {"type": "semantic_dedup", "name": "k1", "params": {"eps": eps, "n_clusters": 1}}],
        "output": {"dir": "out", "write_dropped": True},
    }
    res = run_recipe(recipe, tmp_path)
    kept, dropped = _read(res.out_dir, res.shards), _read(res.out_dir, res.dropped)
    assert kept.num_rows + dropped.num_rows == len(rows) + len(planted)
    dup_of = dict(zip(dropped.column("id").to_pylist(), dropped.column("semdup_of").to_pylist()))
    stage_of = dict(zip(dropped.column("id").to_pylist(), dropped.column("drop_stage").to_pylist()))
    kept_ids = set(kept.column("id").to_pylist())

    # Every planted copy is dropped as a duplicate of its original, which is kept; most already
    # by the clustered pass.
    assert {p: dup_of.get(p) for p in origin} == origin
    assert set(origin.values()) <= kept_ids
    assert sum(stage_of[p] == "k3" for p in origin) >= 9
    assert "semdup_of" not in kept.schema.names and "semdup_similarity" in kept.schema.names
    assert set(dropped.column("drop_reason").to_pylist()) == {"near_duplicate"}

    # Every drop is justified: its kept twin is above the threshold, as recorded.
    vec = {i: v for t in (kept, dropped)
           for i, v in zip(t.column("id").to_pylist(), embed.to_numpy(t.column("embedding")))}
    recorded = dict(zip(dropped.column("id").to_pylist(), dropped.column("semdup_similarity").to_pylist()))
    for i, twin in dup_of.items():
        assert twin in kept_ids
        sim = float(vec[i] @ vec[twin])
        assert sim > 1 - eps and sim == pytest.approx(recorded[i], abs=1e-4)

    # Rows with no near-copy anywhere in the input are all kept; no two kept rows are near-copies.
    ids = list(vec)
    m = np.stack([vec[i] for i in ids])
    sims = m @ m.T
    np.fill_diagonal(sims, -1)
    distinct = {i for i, s in zip(ids, sims.max(axis=1)) if s <= 1 - eps}
    assert len(distinct) >= 120 and distinct <= kept_ids
    k = np.array([i in kept_ids for i in ids])
    assert sims[np.ix_(k, k)].max() <= 1 - eps

    k3, k1 = res.reports["k3"], res.reports["k1"]
    assert k3["clusters"] == 3 and k1["clusters"] == 1 and k3["eps"] == eps and k3["keep"] == "first"
    assert k3["rows"] == len(rows) + len(planted) and k1["rows"] == k3["rows"] - k3["dropped"]
    assert k3["dropped"] + k1["dropped"] == dropped.num_rows
    assert k3["dropped"] == res.counters["k3/dropped/near_duplicate/pool"]
