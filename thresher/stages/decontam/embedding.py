"""The embedding method's pieces: the encoder, the faiss index of benchmark items, row windows.

The encoder is the `embed` stage's (any backend) (`thresher.models.embeddings`: same model, same
normalisation), so a cosine here means what it means there; the index is a
`thresher.models.faiss_index` inner-product index. Those modules import torch,
sentence-transformers and faiss only when a function here is called.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from thresher.io.atomic import write_atomic, write_bytes_atomic
from thresher.models import embedding_cache, embeddings, faiss_index
from thresher.stages.decontam import prefilter


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


_NUMBER = re.compile(r"\d+")


def mask_numbers(texts: list[str]) -> list[str]:
    """Every run of digits replaced by "0": the number-blind text the embedding method compares."""
    return [_NUMBER.sub("0", t) for t in texts]


def embedding_segments(texts: list[str], item: np.ndarray, min_words: int, min_content: int = 2) -> np.ndarray:
    """Which benchmark segments the embedding method embeds (their indices): those of at least
    `min_words` words and `min_content` content words (a vector of "Which of the following is
    true?" is near every short question), and of an item's segments only those whose content
    words are not all in another of its segments: MMLU's question alone and with its choices,
    bare or lettered, are one item, embedded once (as the question with its choices), while
    HumanEval's prompt and solution are two."""
    stop = prefilter.stop_words()
    words = [frozenset(prefilter.content_words(t, stop)) for t in texts]
    ok = [len(t.split()) >= min_words and len(w) >= min_content for t, w in zip(texts, words, strict=True)]
    keep: list[int] = []
    by_item: dict[int, list[int]] = {}
    for s in range(len(texts)):
        if ok[s]:
            by_item.setdefault(int(item[s]), []).append(s)
    for segs in by_item.values():
        for s in segs:
            # covered: another segment has all its words and more, or the same words and comes first
            if not any(words[s] < words[o] or (words[s] == words[o] and o < s) for o in segs if o != s):
                keep.append(s)
    return np.asarray(sorted(keep), np.int64)


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


def item_embeddings(model_obj: Any, texts: list[str], cache_dir: str | None,
                    batch_size: int = 64) -> tuple[np.ndarray, int]:
    """Benchmark item (segment) vectors and how many came from the row cache.

    Items never change between runs, so with a cache folder and a batch-invariant encoder each
    item text is embedded once per model identity (`embedding_cache.namespace`: model
    fingerprint, backend, precision) and read back afterwards; the same entries serve every
    benchmark set that contains the item."""
    cache = embedding_cache.open_cache(cache_dir, model_obj, True)
    try:
        vecs, hits, _ = embedding_cache.encode_cached(model_obj, list(texts), cache, batch_size, True)
    finally:
        if cache is not None:
            cache.close()
    return np.ascontiguousarray(vecs, np.float32), hits


def save_item_embeddings(vectors: np.ndarray, model_obj: Any, path: str, segments: np.ndarray) -> None:
    """The item vectors as an artifact (.npy + .json naming the encoder and, for each vector,
    the benchmark segment it embeds), for the audit."""
    write_atomic(path, lambda fh: np.save(fh, vectors))
    meta = {"items": len(vectors), "encoder": embeddings.identity_of(model_obj),
            "segments": [int(s) for s in segments]}
    write_bytes_atomic(path + ".json", json.dumps(meta, sort_keys=True, default=str).encode())
