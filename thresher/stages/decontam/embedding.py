"""The embedding method's pieces: the encoder, the faiss index of benchmark items, row windows.

The encoder is the `embed` stage's (`thresher.models.embeddings`: same model, same
normalisation), so a cosine here means what it means there; the index is a
`thresher.models.faiss_index` inner-product index. Those modules import torch,
sentence-transformers and faiss only when a function here is called.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from thresher.io.atomic import write_atomic, write_bytes_atomic
from thresher.models import embeddings, faiss_index


def model_problem(model: str | None) -> str | None:
    """Why the model cannot be used (checked before the pipeline), or None."""
    try:
        embeddings.resolve_model_path(model)
    except embeddings.ModelNotFound as exc:
        return f"cannot resolve embedding model {model!r}: {exc}"
    return None


def encode(model_obj: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 0), np.float32)
    v = embeddings.encode_texts(model_obj, texts, batch_size=batch_size, normalize=True)
    return np.ascontiguousarray(v, dtype=np.float32)


def build_index(vectors: np.ndarray) -> Any:
    """Inner-product index (= cosine on unit vectors) over benchmark item embeddings."""
    return faiss_index.build_index(vectors, kind="auto")


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
    path = embeddings.resolve_model_path(model)
    h = hashlib.sha256(path.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    key = h.hexdigest()
    meta_path = cache_path + ".json"
    if os.path.exists(cache_path) and os.path.exists(meta_path):
        with open(meta_path) as fh:
            if json.load(fh).get("key") == key:
                return np.load(cache_path)
    vecs = encode(embeddings.load_model(model, device), texts, batch_size)
    write_atomic(cache_path, lambda fh: np.save(fh, vecs))
    write_bytes_atomic(meta_path, json.dumps({"key": key, "items": len(texts),
                                              "model": path}).encode())
    return vecs
