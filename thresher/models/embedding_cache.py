"""Embeddings reused across runs: encode only the texts the row cache has not seen.

The value stored is the float32 vector exactly as the encoder returned it (before any float16
cast for the shards, which is deterministic), so a hit gives the same bytes as a recompute.
That holds only for an encoder whose vector of a text does not depend on the other texts in
its batch: `batch_invariant` says which do (the onnx/openvino backends, one text per forward).
With a batching encoder (torch pads each mini-batch; its vectors move by ~1e-7 with the batch's
make-up, see bench/embed.py) a partly warm cache would give other bytes than a cold run, so the
callers do not use the cache for it.
"""

from __future__ import annotations

import numpy as np

from thresher.io.row_cache import RowCache, content_keys, namespace_of
from thresher.models import embeddings


def batch_invariant(model_obj) -> bool:
    return embeddings.identity_of(model_obj).get("batching") == "row"


def namespace(model_obj, normalize: bool) -> str:
    """Everything that determines a stored vector: the encoder's identity (model fingerprint,
    backend, precision, max_seq_length, ...) and normalisation."""
    return namespace_of("embedding", {**embeddings.identity_of(model_obj), "normalize": bool(normalize)})


def open_cache(cache_dir: str | None, model_obj, normalize: bool) -> RowCache | None:
    """The row cache for this encoder, or None (no cache folder, or an encoder whose vectors
    depend on batch make-up)."""
    if not cache_dir or not batch_invariant(model_obj):
        return None
    return RowCache.open(cache_dir, namespace(model_obj, normalize))


def encode_cached(model_obj, texts: list[str], cache: RowCache | None, batch_size: int = 64,
                  normalize: bool = True) -> tuple[np.ndarray, int, int]:
    """(vectors float32 (n, d), hits, misses): cached vectors read back, the rest encoded (each
    distinct text once) and stored. Without a cache: everything encoded, (n, 0, 0)."""
    if cache is None or not texts:
        return embeddings.encode_texts(model_obj, texts, batch_size, normalize), 0, 0
    keys = content_keys(texts)
    found = cache.get_many(keys)
    missing = list(dict.fromkeys(k for k, v in zip(keys, found, strict=True) if v is None))
    new: dict[bytes, np.ndarray] = {}
    if missing:
        first = {}
        for k, t in zip(keys, texts, strict=True):
            first.setdefault(k, t)
        vecs = embeddings.encode_texts(model_obj, [first[k] for k in missing], batch_size, normalize)
        vecs = np.ascontiguousarray(vecs, np.float32)
        new = dict(zip(missing, vecs, strict=True))
        cache.put_many((k, v.tobytes()) for k, v in new.items())
    d = embeddings.embedding_dim(model_obj)
    out = np.empty((len(texts), d), np.float32)
    hits = 0
    for i, (k, v) in enumerate(zip(keys, found, strict=True)):
        if v is None:
            out[i] = new[k]
        else:
            out[i] = np.frombuffer(v, np.float32)
            hits += 1
    return out, hits, len(texts) - hits
