"""`ngram_features`: DSIR-style hashed n-gram counts as sparse columns.

In:  canonical batches (reads `text`).
Out: the same rows plus three columns:
     `ngram_buckets` list<int32>  — the hashed n-gram buckets the text has (ascending),
     `ngram_counts`  list<int32>  — how often each of those buckets occurs,
     `n_tokens`      int32        — number of word/punctuation tokens (used for token budgets).
     The two list columns carry Arrow field metadata naming `ngrams`, `num_buckets` and the
     hash version, so a later stage (importance resampling) reuses them only when they were
     made the way it needs.
Cost: CPU only, ~10-15 µs per 100-token document on one core (about 15x the official DSIR
     package's featuriser, see bench/ngrams.py); memory ~ one batch.

Features, as the official DSIR package (Xie et al., 2023) makes them: lowercase the text,
split it into tokens with the pattern `\\w+|[^\\w\\s]+` (what nltk's WordPunctTokenizer does),
take every n-gram for n = 1..`ngrams` and hash each into one of `num_buckets` buckets. The
hash differs from the official package's (sha256 of the space-joined n-gram): here a token's
hash is a 64-bit polynomial hash of its code points, scrambled with splitmix64, and an
n-gram's hash folds its tokens' hashes. The distribution over buckets is as uniform, and the
same text always lands in the same buckets on any machine.

Why not scikit-learn's HashingVectorizer: with the same token pattern it gave ~3.6x the
official featuriser on this corpus (per-document regex, bigram string joins, per-string
murmurhash), short of the 10x this project needs. Here one batch is tokenised at once with
NumPy over its UTF-32 code points; the character classes come from Python's own `str.isalnum`
/ `str.isspace`, so tokens are exactly `re.findall(r"\\w+|[^\\w\\s]+", text.lower())` (the
tests check this on real data).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import Feature, StageParams, rows

TOKEN_PATTERN = r"\w+|[^\w\s]+"
BUCKETS_COLUMN = "ngram_buckets"
COUNTS_COLUMN = "ngram_counts"
N_TOKENS_COLUMN = "n_tokens"
HASH_VERSION = "thresher-ngram-v1"

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_POLY = _U64(0x100000001B3)  # odd, so it has an inverse mod 2**64
_POLY_INV = _U64(pow(0x100000001B3, -1, 1 << 64))

# Character class per code point: 0 whitespace, 1 word (\w), 2 other; -1 not looked up yet.
# Filled lazily from Python's own definitions so tokenisation matches `re` exactly.
_SPACE, _WORD, _OTHER = 0, 1, 2
_CLASS = np.full(0x110000, -1, np.int8)


def _class_of(ch: str) -> int:
    if ch.isalnum() or ch == "_":
        return _WORD
    return _SPACE if ch.isspace() else _OTHER


_CLASS[:128] = [_class_of(chr(c)) for c in range(128)]

# Powers of the polynomial hash base and of its inverse, grown on demand (per process).
_POW = np.ones(1, _U64)
_POW_INV = np.ones(1, _U64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _POW, _POW_INV
    if len(_POW) < n:
        size = max(n, 2 * len(_POW))
        pw = np.full(size, _POLY, _U64)
        pw[0] = 1
        ipw = np.full(size, _POLY_INV, _U64)
        ipw[0] = 1
        with np.errstate(over="ignore"):
            _POW, _POW_INV = np.cumprod(pw), np.cumprod(ipw)
    return _POW[:n], _POW_INV[:n]


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixed stable hash of uint64 values (wrapping arithmetic on purpose)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def _as_list(texts: Any) -> list[str]:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts.to_pylist()
    return list(texts)


def _code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lowercased texts as one UTF-32 code-point array joined by '\\n', and each text's start."""
    lowered = [t.lower() for t in texts]
    lengths = np.fromiter(map(len, lowered), np.int64, len(lowered))
    starts = np.zeros(len(lowered), np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    # '\n' is whitespace, so no token spans two texts.
    joined = "\n".join(lowered).encode("utf-32-le", "surrogatepass")
    return np.frombuffer(joined, np.uint32), starts


def _classes(cp: np.ndarray) -> np.ndarray:
    cls = _CLASS[cp]
    unknown = cls < 0
    if unknown.any():
        for u in np.unique(cp[unknown]).tolist():
            _CLASS[u] = _class_of(chr(u))
        cls = _CLASS[cp]
    return cls


def tokens(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes (uint64) and the text index of each token, in text order.

    Tokens are `re.findall(TOKEN_PATTERN, text.lower())`; a token's hash depends only on its
    characters.
    """
    texts = _as_list(texts)
    if not texts:
        return np.zeros(0, _U64), np.zeros(0, np.int64)
    cp, text_starts = _code_points(texts)
    if len(cp) == 0:
        return np.zeros(0, _U64), np.zeros(0, np.int64)
    cls = _classes(cp)
    prev = np.empty_like(cls)
    prev[0] = _SPACE
    prev[1:] = cls[:-1]
    nxt = np.empty_like(cls)
    nxt[-1] = _SPACE
    nxt[:-1] = cls[1:]
    in_token = cls != _SPACE
    starts = np.flatnonzero(in_token & (cls != prev))
    ends = np.flatnonzero(in_token & (cls != nxt)) + 1
    # Polynomial hash of each token's code points, made position-independent with the
    # inverse powers: sum_j cp[start + j] * P**j (mod 2**64).
    pw, ipw = _powers(len(cp) + 1)
    prefix = np.zeros(len(cp) + 1, _U64)
    with np.errstate(over="ignore"):
        np.cumsum(cp.astype(_U64) * pw[:-1], out=prefix[1:])
        poly = (prefix[ends] - prefix[starts]) * ipw[starts]
        hashes = splitmix64(poly + (ends - starts).astype(_U64) * _GOLDEN)
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    return hashes, doc


def ngram_rows(texts: Iterable[str], ngrams: int = 2, num_buckets: int = 10_000
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every n-gram occurrence grouped by text: (indptr int64, bucket int32, n_tokens int32).

    Text i's occurrences are `bucket[indptr[i]:indptr[i+1]]` (its unigrams, then bigrams, ...),
    not aggregated: a bucket may repeat within a text. `featurize` sums them into counts.
    Sums over a text's occurrences need no sort, so the selector uses this form directly.
    """
    texts = _as_list(texts)
    n = len(texts)
    tok, doc = tokens(texts)
    n_tokens = np.bincount(doc, minlength=n).astype(np.int32)
    per_order: list[tuple[np.ndarray, np.ndarray]] = [(tok, doc)]
    gram = tok
    with np.errstate(over="ignore"):
        for m in range(2, ngrams + 1):
            if len(gram) < 2:
                break
            # gram[i] covers tokens i..i+m-1; it counts only when they are in one text.
            # `gram` itself stays unmasked: the next order folds in one more token.
            gram = splitmix64(gram[:-1] * _GOLDEN + tok[m - 1:])
            same = doc[: len(gram)] == doc[m - 1:]
            per_order.append((gram[same], doc[m - 1:][same]))
    # Each order's occurrences are already in text order; place them text by text with
    # offsets instead of sorting: text d gets [its unigrams, its bigrams, ...].
    counts = [np.bincount(d, minlength=n) for _, d in per_order]
    per_text = np.sum(counts, axis=0) if n else np.zeros(0, np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(per_text, out=indptr[1:])
    out = np.empty(int(indptr[-1]), np.int32)
    base = indptr[:-1].copy()
    for (h, d), c in zip(per_order, counts):
        if len(h):
            first = np.zeros(n, np.int64)
            np.cumsum(c[:-1], out=first[1:])  # index of text d's first occurrence of this order
            dest = base[d] + (np.arange(len(h)) - first[d])
            out[dest] = (h % _U64(num_buckets)).astype(np.int32)
        base += c
    return indptr, out, n_tokens


def featurize(texts: Iterable[str], ngrams: int = 2, num_buckets: int = 10_000):
    """Texts -> `scipy.sparse.csr_matrix` (n_texts x num_buckets, int32 counts, sorted rows)."""
    import scipy.sparse as sp

    texts = _as_list(texts)
    indptr, buckets, counts, _ = _aggregate(texts, ngrams, num_buckets)
    return sp.csr_matrix((counts, buckets, indptr), shape=(len(texts), num_buckets))


def token_counts(texts: Iterable[str]) -> np.ndarray:
    """Number of `TOKEN_PATTERN` tokens of each lowercased text (int32)."""
    texts = _as_list(texts)
    _, doc = tokens(texts)
    return np.bincount(doc, minlength=len(texts)).astype(np.int32)


def _aggregate(texts: list[str], ngrams: int, num_buckets: int):
    """(indptr int64, buckets int32, counts int32, n_tokens int32): canonical sparse rows."""
    indptr_in, b, n_tokens = ngram_rows(texts, ngrams, num_buckets)
    n = len(texts)
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


# ---------------------------------------------------------------------------------------
# Columns


def column_metadata(ngrams: int, num_buckets: int) -> dict[bytes, bytes]:
    return {b"thresher.ngrams": str(ngrams).encode(), b"thresher.num_buckets": str(num_buckets).encode(),
            b"thresher.hash": HASH_VERSION.encode()}


def feature_columns(texts: Any, ngrams: int = 2, num_buckets: int = 10_000
                    ) -> tuple[pa.Field, pa.Array, pa.Field, pa.Array, np.ndarray]:
    """Texts -> (buckets field, buckets list array, counts field, counts list array, n_tokens)."""
    texts = _as_list(texts)
    indptr, buckets, counts, n_tokens = _aggregate(texts, ngrams, num_buckets)
    offsets = pa.array(indptr.astype(np.int32))
    meta = column_metadata(ngrams, num_buckets)
    b_arr = pa.ListArray.from_arrays(offsets, pa.array(buckets, pa.int32()))
    c_arr = pa.ListArray.from_arrays(offsets, pa.array(counts, pa.int32()))
    return (pa.field(BUCKETS_COLUMN, b_arr.type, metadata=meta), b_arr,
            pa.field(COUNTS_COLUMN, c_arr.type, metadata=meta), c_arr, n_tokens)


def columns_match(schema: pa.Schema, ngrams: int, num_buckets: int, prefix: str = "") -> bool:
    """True when `schema` has bucket/count columns made with these settings."""
    want = column_metadata(ngrams, num_buckets)
    for name in (prefix + BUCKETS_COLUMN, prefix + COUNTS_COLUMN):
        idx = schema.get_field_index(name)
        if idx < 0:
            return False
        meta = schema.field(idx).metadata or {}
        if any(meta.get(k) != v for k, v in want.items()):
            return False
    return True


def sparse_from_columns(buckets: pa.Array, counts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """List columns -> (row index per entry int64, bucket int32, count int32)."""
    if isinstance(buckets, pa.ChunkedArray):
        buckets = buckets.combine_chunks()
    if isinstance(counts, pa.ChunkedArray):
        counts = counts.combine_chunks()
    offsets = buckets.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced list array keeps its parent's offsets
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(buckets), dtype=np.int64), lengths)
    b = buckets.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    c = counts.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return row, b, c


def add_feature_columns(batch: pa.RecordBatch, ngrams: int, num_buckets: int, prefix: str = "",
                        with_n_tokens: bool = True) -> pa.RecordBatch:
    """`batch` plus `<prefix>ngram_buckets`, `<prefix>ngram_counts` (and `<prefix>n_tokens`)."""
    bf, b, cf, c, n_tok = feature_columns(batch.column(rows.TEXT), ngrams, num_buckets)
    new = [(bf.with_name(prefix + bf.name), b), (cf.with_name(prefix + cf.name), c)]
    if with_n_tokens:
        new.append((pa.field(prefix + N_TOKENS_COLUMN, pa.int32()), pa.array(n_tok, pa.int32())))
    out = batch
    for field, arr in new:
        idx = out.schema.get_field_index(field.name)
        out = out.set_column(idx, field, arr) if idx >= 0 else out.append_column(field, arr)
    return out


# ---------------------------------------------------------------------------------------
# The stage


class NgramFeaturesParams(StageParams):
    ngrams: int = Field(2, ge=1, le=5, description="Largest n: 2 means unigrams and bigrams (as DSIR).")
    num_buckets: int = Field(10_000, ge=1, le=1 << 24, description="Hash buckets (DSIR uses 10,000).")


class NgramFeatures(Feature):
    __doc__ = __doc__
    type_name = "ngram_features"
    Params = NgramFeaturesParams
    cost = "CPU: ~10-15 µs per 100-token document; memory ~ one batch"

    def columns(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return add_feature_columns(batch, self.params.ngrams, self.params.num_buckets)
