"""`thresher.models.faiss_index`: build, save, load and query inner-product indexes."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.models import faiss_index


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_auto_is_flat_below_ivf_min_rows_then_ivf():
    assert faiss_index.choose_kind("auto", 99, ivf_min_rows=100) == "flat"
    assert faiss_index.choose_kind("auto", 100, ivf_min_rows=100) == "ivf"
    assert faiss_index.choose_kind("ivfpq", 5, ivf_min_rows=100) == "ivfpq"
    with pytest.raises(ValueError, match="unknown index kind"):
        faiss_index.choose_kind("hnsw", 5, ivf_min_rows=100)


def test_default_nlist_keeps_39_training_points_per_list():
    assert faiss_index.default_nlist(10) == 1
    assert faiss_index.default_nlist(39 * 40) == 40
    assert faiss_index.default_nlist(1_000_000) == 4000


def test_flat_index_finds_each_vector_and_refuses_wrong_dimensions():
    v = _unit(50, 16)
    index = faiss_index.build_index(v, "flat")
    scores, pos = faiss_index.search(index, v[:5], 2)
    assert pos[:, 0].tolist() == list(range(5))
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)
    assert faiss_index.describe(index) == {"ntotal": 50, "dim": 16, "gpu": False, "kind": "flat"}
    with pytest.raises(ValueError, match="dimension 8, the index 16"):
        faiss_index.search(index, v[:2, :8], 1)


def test_ids_must_match_the_index(tmp_path):
    index = faiss_index.build_index(_unit(4, 8), "flat")
    with pytest.raises(ValueError, match="3 ids for an index of 4 vectors"):
        faiss_index.save_index(index, ["a", "b", "c"], str(tmp_path / "x.faiss"))
    with pytest.raises(FileNotFoundError, match="no faiss index"):
        faiss_index.load_index(str(tmp_path / "missing.faiss"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_saved_index_answers_the_same_queries(corpus, tmp_path, kind):
    rows, vectors, queries = corpus
    index = faiss_index.build_index(vectors, kind, nlist=2, pq_m=48)
    before = faiss_index.search(index, queries, 5)
    paths = faiss_index.save_index(index, [r["id"] for r in rows], str(tmp_path / "pool.faiss"))
    assert paths == [str(tmp_path / "pool.faiss"), str(tmp_path / "pool.ids.arrow")]
    loaded, ids = faiss_index.load_index(paths[0])
    after = faiss_index.search(loaded, queries, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)
    assert list(ids) == [r["id"] for r in rows]
    assert faiss_index.describe(loaded)["kind"] == kind
