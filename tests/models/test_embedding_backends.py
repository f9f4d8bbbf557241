"""Embedding backends (`thresher.models.embedding_backends`), the backend choice and the
embedding row cache (`thresher.models.embedding_cache`); the real onnx export in tests marked slow."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.io.row_cache import RowCache
from thresher.models import embedding_backends, embedding_cache, embeddings


class RowModel:
    """Batch-invariant stand-in: a text's vector depends on that text only."""

    thresher_identity = {"model": "fake", "backend": "onnx", "precision": "int8", "batching": "row"}

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
               show_progress_bar=False):
        self.calls.append(list(texts))
        v = np.array([[len(t) + 1.0, t.count("a") + 0.5, 1.0 / 3] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True) if normalize_embeddings else v

    def get_sentence_embedding_dimension(self):
        return 3


def test_cached_vectors_are_the_computed_bytes_and_only_misses_are_encoded(tmp_path):
    model = RowModel()
    cache = embedding_cache.open_cache(str(tmp_path), model, True)
    texts = ["banana", "apple", "banana", ""]
    v1, hits, misses = embedding_cache.encode_cached(model, texts, cache)
    assert (hits, misses) == (0, 4) and model.calls == [["banana", "apple", ""]]  # each distinct text once
    v2, hits, misses = embedding_cache.encode_cached(model, ["apple", "cherry", "banana"], cache)
    assert (hits, misses) == (2, 1) and model.calls[-1] == ["cherry"]
    assert v2[0].tobytes() == v1[1].tobytes() and v2[2].tobytes() == v1[0].tobytes()
    assert v2[1].tobytes() == model.encode(["cherry"])[0].tobytes()
    # Another normalisation (or model identity) is another namespace: a miss, never a stale hit.
    other = embedding_cache.open_cache(str(tmp_path), model, False)
    assert other.namespace != cache.namespace
    _, hits, misses = embedding_cache.encode_cached(model, ["apple"], other, normalize=False)
    assert (hits, misses) == (0, 1)


def test_no_cache_for_a_batching_encoder_or_without_a_folder(tmp_path):
    model = RowModel()
    assert embedding_cache.open_cache(None, model, True) is None
    torch_like = type("T", (), {"thresher_identity": {"model": "m", "backend": "torch", "batching": "sorted"}})()
    assert embedding_cache.open_cache(str(tmp_path), torch_like, True) is None
    assert not list(tmp_path.iterdir())
    v, hits, misses = embedding_cache.encode_cached(model, ["x", "y"], None)
    assert v.shape == (2, 3) and (hits, misses) == (0, 0)
    assert isinstance(embedding_cache.open_cache(str(tmp_path), model, True), RowCache)


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(embeddings, "resolve_device", lambda device="auto": "cuda" if device != "cpu" else "cpu")
    monkeypatch.setattr(embedding_backends, "backend_problem", lambda backend="onnx": None)
    assert embeddings.choose_backend("auto", "auto") == ("torch", "fp16", "cuda")
    assert embeddings.choose_backend("torch", "cuda", "fp32") == ("torch", "fp32", "cuda")
    assert embeddings.choose_backend("auto", "cpu") == ("onnx", "int8", "cpu")
    assert embeddings.choose_backend("openvino", "cpu", "fp32") == ("openvino", "fp32", "cpu")
    assert embeddings.choose_backend("torch", "cpu") == ("torch", "fp32", "cpu")
    with pytest.raises(ValueError, match="runs on CPU only here"):
        embeddings.choose_backend("onnx", "cuda")
    with pytest.raises(ValueError, match="int8 is for the onnx/openvino CPU backends"):
        embeddings.choose_backend("torch", "cuda", "int8")
    monkeypatch.setattr(embedding_backends, "backend_problem",
                        lambda backend="onnx": f"the {backend} embedding backend needs `onnxruntime`")
    assert embeddings.choose_backend("auto", "cpu", "int8") == ("torch", "fp32", "cpu")  # clean fallback
    with pytest.raises(ValueError, match="needs `onnxruntime`"):
        embeddings.choose_backend("onnx", "cpu")


def test_model_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    a = embedding_backends.model_fingerprint(str(tmp_path))
    assert embedding_backends.model_fingerprint(str(tmp_path)) == a
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert embedding_backends.model_fingerprint(str(tmp_path)) != a


def test_export_root(tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_EXPORT_DIR", str(tmp_path / "x"))
    assert embedding_backends.export_root() == str(tmp_path / "x")


@pytest.mark.slow
def test_onnx_int8_agrees_with_fp32_torch_and_ignores_batch_makeup(corpus):
    """The real export (made once per machine in the user export cache, ~20 s the first time)."""
    pytest.importorskip("onnxruntime")
    rows, vectors, _ = corpus
    model = embeddings.load_model(None, "cpu", backend="onnx", precision="int8")
    texts = [r["text"] for r in rows[:40]]
    got = embeddings.encode_texts(model, texts)
    cos = (got * vectors[:40]).sum(1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.95, (cos.mean(), cos.min())
    # A row's vector is the same alone, in another order, or next to other rows: cache-safe.
    alone = np.concatenate([embeddings.encode_texts(model, [t]) for t in texts[:5]])
    assert alone.tobytes() == got[:5].tobytes()
    assert embeddings.encode_texts(model, texts[::-1])[::-1].tobytes() == got.tobytes()
