"""`semantic_dedup`: the greedy walk and the hooks on hand-made vectors (fast); planted
near-duplicates of real general_pool rows go, distinct rows stay (real model on each embedding
backend, slow)."""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest

from tests._general_pool import short_rows, write_jsonl
from tests.conftest import run_recipe
from thresher.core.context import StageContext
from thresher.models import embedding_backends, embeddings
from thresher.recipe.schema import Recipe, RecipeError
from thresher.stages.dedup.semantic_dedup import SemanticDedup, dedup_cluster, greedy_dedup, train_kmeans
from thresher.testing.harness import make_batch, run_stage


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
    # row key 1 is the first row; row key 2 lies farther from the centroid (similarity 0.9 vs 0.95);
    # they sit in batches keyed 10 and 20
    part = (np.array([1, 2], np.uint64), np.array(["k1", "k2"], object), v, np.array([0.95, 0.9], np.float32),
            np.array([10, 20], np.int64))
    out = dict(dedup_cluster((0, [part]), 0.99, rule))
    loser, loser_batch = (2, 20) if kept == "k1" else (1, 10)
    assert list(out[loser_batch]["dup_of"]) == [kept] and out[loser_batch]["keys"].tolist() == [loser]
    # the cluster's size rides on the part for the batch of its lowest row key (1, batch 10)
    assert out[10]["cluster"] == (1, 2) and sum("cluster" in p for p in out.values()) == 1


def test_decide_looks_up_each_row_in_its_parts():
    batch = make_batch([{"text": t} for t in "abcd"])  # row keys 0..3
    # two clusters' parts for this batch, out of row-key order
    parts = [{"keys": np.array([3], np.uint64), "sim": np.array([0.995], np.float32),
              "dup_of": np.array(["0"], object), "cluster": (0, 7)},
             {"keys": np.array([1], np.uint64), "sim": np.array([0.5], np.float32), "dup_of": np.array([None], object)}]
    keep, reason, cols = SemanticDedup().decide(batch, parts)
    assert keep.tolist() == [True, True, True, False] and reason == "near_duplicate"
    assert cols["semdup_of"].to_pylist() == [None, None, None, "0"]
    assert cols["semdup_similarity"].to_pylist() == pytest.approx([None, 0.5, None, 0.995])
    assert cols["__semdup_cluster_size"].to_pylist() == [7, None, None, None]
    keep, _, cols = SemanticDedup().decide(batch, [])
    assert keep.all() and cols["semdup_similarity"].null_count == 4 and cols["__semdup_cluster_size"].null_count == 4


def _stage(params: dict, tmp_path, stages: list[dict] | None = None) -> SemanticDedup:
    """A semantic_dedup stage placed after `stages` (default: one `embed`) in a recipe."""
    stages = [{"type": "embed"}] if stages is None else stages
    recipe = Recipe.model_validate({"sources": [{"name": "test", "paths": ["<memory>"]}], "base_dir": str(tmp_path),
                                    "stages": [*stages, {"type": "semantic_dedup", "params": params}]})
    ctx = StageContext(name="semantic_dedup", seed=1, out_dir=str(tmp_path), work_dir=str(tmp_path / "_work"),
                       recipe=recipe, index=len(stages), write_dropped=True)
    return SemanticDedup(params, ctx)


def test_check_wants_an_embed_stage_before_it_writing_the_column(tmp_path):
    assert _stage({}, tmp_path).check() == []
    assert _stage({"column": "vec"}, tmp_path, [{"type": "embed", "params": {"column": "vec"}}]).check() == []
    for before in ([], [{"type": "exact_dedup"}], [{"type": "embed", "params": {"column": "vec"}}]):
        (problem,) = _stage({}, tmp_path, before).check()
        assert problem.startswith("params.column:") and "no `embed` stage before it" in problem


def test_stage_run_drops_near_copies_of_kept_rows(tmp_path):
    rng = np.random.default_rng(4)
    base = _unit(rng.standard_normal((12, 8)))
    vectors = np.concatenate([base, _unit(base[[2, 5, 9]] + 0.01 * rng.standard_normal((3, 8)))])
    rows = [{"text": f"t{i}", "id": f"r{i}"} for i in range(len(vectors))]
    batches = [make_batch(rows[i:i + 4], first_key=i).append_column("embedding", embeddings.to_arrow(vectors[i:i + 4]))
               for i in range(0, len(rows), 4)]
    res = run_stage(_stage({"eps": 0.05, "n_clusters": 1}, tmp_path), batches, out_dir=str(tmp_path))
    assert res.kept.column("id").to_pylist() == [f"r{i}" for i in range(12)]
    assert res.dropped.column("id").to_pylist() == ["r12", "r13", "r14"]
    assert res.dropped.column("semdup_of").to_pylist() == ["r2", "r5", "r9"]
    assert set(res.dropped.column("drop_reason").to_pylist()) == {"near_duplicate"}
    assert "semdup_of" not in res.kept.schema.names and "semdup_similarity" in res.kept.schema.names
    assert min(res.dropped.column("semdup_similarity").to_pylist()) > 0.95
    assert res.counters["semantic_dedup/in/test"] == 15
    assert res.counters["semantic_dedup/dropped/near_duplicate/test"] == 3
    assert res.report == {"rows": 15, "clusters": 1, "kmeans_train_rows": 15, "nonempty_clusters": 1,
                          "largest_cluster": 15, "dropped": 3, "eps": 0.05, "threshold": 0.95, "keep": "first",
                          "seed": 1, "artifacts": []}


def test_only_the_centroids_are_broadcast(tmp_path):
    # Per-cluster decisions reach their batches by a join on the batch key; the one side
    # input (read by the cluster assignment and the report) is k-means' result: k x d floats.
    st = _stage({"n_clusters": 1}, tmp_path)
    p = beam.Pipeline()
    batch = make_batch([{"text": "x"}]).append_column("embedding", embeddings.to_arrow(_unit(np.ones((1, 4)))))
    _ = p | beam.Create([batch]) | st.transform()
    found: dict[str, set[str]] = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            # (InjectDefault: CombineGlobally's own default value for an empty input)
            mine = node.full_label.startswith("semantic_dedup/") and not node.full_label.endswith("/InjectDefault")
            if node.side_inputs and mine:
                found[node.full_label] = {s.pvalue.producer.full_label for s in node.side_inputs}

    p.visit(Visitor())
    assert found == {"semantic_dedup/SelectKeyed/Assign": {"semantic_dedup/Select/KMeans"},
                     "semantic_dedup/Report": {"semantic_dedup/Select/KMeans"}}
    sample = {"rows": 10_000, "vectors": _unit(np.random.default_rng(0).standard_normal((50, 4)))}
    kmeans = train_kmeans(sample, st.params, seed=1)
    assert sorted(kmeans) == ["centroids", "k", "rows", "train_rows"] and kmeans["centroids"].shape == (1, 4)


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


# The `embed` stage's backends. The fp32 export gives torch's vectors to ~1e-7; int8 moves them
# (mean cosine ~0.994 to fp32) by more than this test's closest planted pair allows, which is why
# `backend: auto` never picks int8 on MiniLM (embedding_backends.meets_bar). openvino runs the
# same fp32 file as onnx (the same vectors: tests/models/test_embedding_backends.py), at ~2x
# onnx's time here, so it is not run again on this recipe.
INT8_MISSES = ("int8 moves planted-6 (one word dropped from the middle of its original) to cosine 0.8995 from "
               "its original, under the 0.9 threshold (eps 0.1): kept; torch and the fp32 exports give 0.9037")
BACKENDS = [
    pytest.param({}, id="torch"),
    pytest.param({"backend": "onnx", "precision": "fp32"}, id="onnx-fp32"),
    pytest.param({"backend": "onnx", "precision": "int8"}, id="onnx-int8",
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=INT8_MISSES)),
]


@pytest.mark.slow
@pytest.mark.parametrize("embed_params", BACKENDS)
def test_planted_near_duplicates_are_dropped_and_distinct_rows_kept(shared_data, tmp_path, embed_params):
    if embed_params and embedding_backends.backend_problem(embed_params["backend"]):
        pytest.skip(embedding_backends.backend_problem(embed_params["backend"]))
    rows = short_rows(shared_data, 150)
    sources = rows[::10][:12]
    planted = [{"id": f"planted-{i}", "text": _edit(r["text"], i)} for i, r in enumerate(sources)]
    origin = {p["id"]: r["id"] for p, r in zip(planted, sources, strict=True)}
    # Planted rows come last, so with keep: first the original is the row kept.
    write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows] + planted)
    eps = 0.1
    # Two passes: k-means with 3 clusters (a near-copy pair split across clusters survives it:
    # SemDeDup's known price), then one cluster, i.e. every remaining pair compared.
    recipe = {
        "seed": 7,
        "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
        "stages": [{"type": "embed", "params": embed_params},
                   {"type": "semantic_dedup", "name": "k3", "params": {"eps": eps, "n_clusters": 3}},
                   {"type": "semantic_dedup", "name": "k1", "params": {"eps": eps, "n_clusters": 1}}],
        "output": {"dir": "out", "write_dropped": True},
    }
    res = run_recipe(recipe, tmp_path)
    kept, dropped = _read(res.out_dir, res.shards), _read(res.out_dir, res.dropped)
    assert kept.num_rows + dropped.num_rows == len(rows) + len(planted)
    dup_of = dict(zip(dropped.column("id").to_pylist(), dropped.column("semdup_of").to_pylist(), strict=True))
    stage_of = dict(zip(dropped.column("id").to_pylist(), dropped.column("drop_stage").to_pylist(), strict=True))
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
           for i, v in zip(t.column("id").to_pylist(), embeddings.to_numpy(t.column("embedding")), strict=True)}
    recorded = dict(zip(dropped.column("id").to_pylist(), dropped.column("semdup_similarity").to_pylist(),
                        strict=True))
    for i, twin in dup_of.items():
        assert twin in kept_ids
        sim = float(vec[i] @ vec[twin])
        assert sim > 1 - eps and sim == pytest.approx(recorded[i], abs=1e-4)

    # Rows with no near-copy anywhere in the input are all kept; no two kept rows are near-copies.
    ids = list(vec)
    m = np.stack([vec[i] for i in ids])
    sims = m @ m.T
    np.fill_diagonal(sims, -1)
    distinct = {i for i, s in zip(ids, sims.max(axis=1), strict=True) if s <= 1 - eps}
    assert len(distinct) >= 120 and distinct <= kept_ids
    k = np.array([i in kept_ids for i in ids])
    assert sims[np.ix_(k, k)].max() <= 1 - eps

    k3, k1 = res.reports["k3"], res.reports["k1"]
    assert k3["clusters"] == 3 and k1["clusters"] == 1 and k3["eps"] == eps and k3["keep"] == "first"
    assert k3["rows"] == len(rows) + len(planted) and k1["rows"] == k3["rows"] - k3["dropped"]
    assert k3["dropped"] + k1["dropped"] == dropped.num_rows
    assert k3["dropped"] == res.counters["k3/dropped/near_duplicate/pool"]
