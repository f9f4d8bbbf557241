"""Hashed n-gram counts per text, the DSIR features (Xie et al., 2023): tokenise (`tokenize`),
hash every n-gram for n = 1..`ngrams` (`hashing`), and take the hash mod `num_buckets`.

The official DSIR package hashes the space-joined n-gram with sha256; here the shared hasher
does, which spreads n-grams over the buckets as uniformly and is ~15x faster for the whole
featuriser (bench/ngrams.py).

Cost: ~10-15 µs per 100-token text on one core (short rows: ~3 µs per 20-token sentence,
1.3-1.9x less than with a Python string and `str.lower` per text); memory ~ a few arrays of
the batch's tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from thresher.text.hashing import U64, ngram_orders, token_hashes
from thresher.text.tokenize import tokenize


def ngram_rows(texts: Iterable[str] | Any, ngrams: int = 2, num_buckets: int = 10_000,
               dtype: Any = np.int32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every n-gram occurrence grouped by text: (indptr int64, bucket `dtype`, n_tokens int32).

    Text i's occurrences are `bucket[indptr[i]:indptr[i+1]]` (its unigrams, then bigrams, ...),
    not aggregated: a bucket may repeat within a text. `bucket_rows` sums them into counts.
    Sums over a text's occurrences need no sort, so DSIR's scoring uses this form directly.
    """
    tok = tokenize(texts)
    n = tok.n_texts
    n_tokens = tok.counts()
    per_order = ngram_orders(token_hashes(tok), tok.doc, ngrams)
    # Each order's occurrences are already in text order; place them text by text with
    # offsets instead of sorting: text d gets [its unigrams, its bigrams, ...]. Text d has
    # max(tokens - m + 1, 0) m-grams.
    counts = [np.maximum(n_tokens.astype(np.int64) - m, 0) for m in range(len(per_order))]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.sum(counts, axis=0) if n else np.zeros(0, np.int64), out=indptr[1:])
    out = np.empty(int(indptr[-1]), dtype)
    base = indptr[:-1].copy()
    for (h, d), c in zip(per_order, counts, strict=True):
        if len(h):
            # text d's m-grams go to base[d] onwards: shift each by its order's start of text d
            first = np.zeros(n, np.int64)
            np.cumsum(c[:-1], out=first[1:])
            dest = (base - first)[d]
            dest += np.arange(len(h))
            out[dest] = h % U64(num_buckets)  # cast to `dtype` by the assignment
        base += c
    return indptr, out, n_tokens


def bucket_rows(texts: Iterable[str] | Any, ngrams: int = 2, num_buckets: int = 10_000
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Canonical sparse rows: (indptr int64, buckets int32 ascending per text, counts int32,
    n_tokens int32)."""
    indptr_in, b, n_tokens = ngram_rows(texts, ngrams, num_buckets)
    n = len(n_tokens)
    if len(b) == 0:
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), n_tokens
    # One sort of (text, bucket) keys; int32 keys sort ~2x faster when they fit.
    key_dtype = np.int32 if n * num_buckets < 2**31 else np.int64
    d = np.repeat(np.arange(n, dtype=key_dtype), np.diff(indptr_in))
    keys = np.sort(d * key_dtype(num_buckets) + b.astype(key_dtype))
    first = np.empty(len(keys), bool)
    first[0] = True
    first[1:] = keys[1:] != keys[:-1]
    idx = np.flatnonzero(first)
    counts = np.diff(np.append(idx, len(keys))).astype(np.int32)
    uniq = keys[idx]
    row = uniq // num_buckets
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
    return indptr, (uniq % num_buckets).astype(np.int32), counts, n_tokens


def featurize(texts: Iterable[str] | Any, ngrams: int = 2, num_buckets: int = 10_000):
    """Texts -> `scipy.sparse.csr_matrix` (n_texts x num_buckets, int32 counts, sorted rows)."""
    import scipy.sparse as sp  # only tests and benches build matrices: keep scipy off import

    indptr, buckets, counts, _ = bucket_rows(texts, ngrams, num_buckets)
    return sp.csr_matrix((counts, buckets, indptr), shape=(len(indptr) - 1, num_buckets))
