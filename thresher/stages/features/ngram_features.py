"""`ngram_features`: DSIR-style hashed n-gram counts as sparse columns.

In:  canonical batches (reads `text`).
Out: the same rows plus three columns:
     `ngram_buckets` list<int32>  — the hashed n-gram buckets the text has (ascending),
     `ngram_counts`  list<int32>  — how often each of those buckets occurs,
     `n_tokens`      int32        — with the recipe's `tokenizer:`, model tokens of `text` (no
                                    special tokens); its field metadata names the tokenizer,
     or, without a tokenizer,
     `n_words`       int32        — word/punctuation tokens (the n-gram features' own tokens).
     Token budgets downstream (`importance_resample`) are in the unit of that column.
     The two list columns carry Arrow field metadata naming `ngrams`, `num_buckets` and the
     hash version, so a later stage (importance resampling) reuses them only when they were
     made the way it needs.
Cost: CPU only, ~10-15 µs per 100-token document on one core (about 15x the official DSIR
     package's featuriser, see bench/ngrams.py); memory ~ one batch. A tokenizer adds its
     own `encode_batch` cost (one thread: at most ~1 ms per 500-character row for MiniLM,
     ~2 ms for SmolLM2, measured on a heavily shared core).

Features, as the official DSIR package (Xie et al., 2023) makes them: lowercase the text,
split it into tokens with the pattern `\\w+|[^\\w\\s]+` (what nltk's WordPunctTokenizer does),
take every n-gram for n = 1..`ngrams` and hash each into one of `num_buckets` buckets. The
hash differs from the official package's (sha256 of the space-joined n-gram): it is
thresher's shared n-gram hasher (`thresher.text.hashing`: a polynomial hash of each token's
code points scrambled with splitmix64, n-grams folding their tokens' hashes). The
distribution over buckets is as uniform, and the same text always lands in the same buckets
on any machine.

Why not scikit-learn's HashingVectorizer: with the same token pattern it gave ~3.6x the
official featuriser on this corpus (per-document regex, bigram string joins, per-string
murmurhash), short of the 10x this project needs. Here one batch is tokenised at once with
NumPy over its UTF-32 code points (`thresher.text.tokenize`); tokens are exactly
`re.findall(r"\\w+|[^\\w\\s]+", text.lower())` (the tests check this on real data).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import Feature, StageParams, rows
from thresher.core.columns import as_array, set_column
from thresher.models.tokenizer import TokenizerHandle, recipe_tokenizer, require_tokenizer
from thresher.text.hashing import HASH_VERSION
from thresher.text.ngrams import bucket_rows
from thresher.text.tokenize import as_list

BUCKETS_COLUMN = "ngram_buckets"
COUNTS_COLUMN = "ngram_counts"
N_TOKENS_COLUMN = "n_tokens"  # model tokens (the recipe has a tokenizer)
N_WORDS_COLUMN = "n_words"  # word/punctuation tokens (it has none)
TOKENIZER_META = b"thresher.tokenizer"  # on `n_tokens`: the sha256 of the tokenizer that counted


def column_metadata(ngrams: int, num_buckets: int) -> dict[bytes, bytes]:
    return {b"thresher.ngrams": str(ngrams).encode(), b"thresher.num_buckets": str(num_buckets).encode(),
            b"thresher.hash": HASH_VERSION.encode()}


def feature_columns(texts: Any, ngrams: int = 2, num_buckets: int = 10_000
                    ) -> tuple[pa.Field, pa.Array, pa.Field, pa.Array, np.ndarray]:
    """Texts -> (buckets field, buckets list array, counts field, counts list array, n_tokens)."""
    texts = as_list(texts)
    indptr, buckets, counts, n_tokens = bucket_rows(texts, ngrams, num_buckets)
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


def sparse_from_columns(buckets: Any, counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """List columns -> (row index per entry int64, bucket int32, count int32)."""
    buckets, counts = as_array(buckets), as_array(counts)
    offsets = buckets.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced list array keeps its parent's offsets
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(buckets), dtype=np.int64), lengths)
    b = buckets.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    c = counts.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return row, b, c


def count_field(tokenizer: TokenizerHandle | None, prefix: str = "") -> pa.Field:
    """The count column's field: `n_tokens` naming its tokenizer, or `n_words`."""
    if tokenizer is None:
        return pa.field(prefix + N_WORDS_COLUMN, pa.int32())
    return pa.field(prefix + N_TOKENS_COLUMN, pa.int32(), metadata={TOKENIZER_META: tokenizer.sha256.encode()})


def counted_by(schema: pa.Schema, tokenizer: TokenizerHandle | None) -> str | None:
    """The column of `schema` that holds counts in `tokenizer`'s unit (words when None), or None."""
    if tokenizer is None:
        return N_WORDS_COLUMN if N_WORDS_COLUMN in schema.names else None
    idx = schema.get_field_index(N_TOKENS_COLUMN)
    if idx < 0:
        return None
    meta = schema.field(idx).metadata or {}
    return N_TOKENS_COLUMN if meta.get(TOKENIZER_META) == tokenizer.sha256.encode() else None


def add_feature_columns(batch: pa.RecordBatch, ngrams: int, num_buckets: int, prefix: str = "",
                        with_n_tokens: bool = True, tokenizer: TokenizerHandle | None = None) -> pa.RecordBatch:
    """`batch` plus `<prefix>ngram_buckets`, `<prefix>ngram_counts` (and the count column:
    `<prefix>n_tokens` by `tokenizer`, or `<prefix>n_words` without one)."""
    bf, b, cf, c, n_words = feature_columns(batch.column(rows.TEXT), ngrams, num_buckets)
    out = set_column(batch, bf.with_name(prefix + bf.name), b)
    out = set_column(out, cf.with_name(prefix + cf.name), c)
    if with_n_tokens:
        n = n_words if tokenizer is None else tokenizer.count(batch.column(rows.TEXT))
        out = set_column(out, count_field(tokenizer, prefix), pa.array(n, pa.int32()))
    return out


class NgramFeaturesParams(StageParams):
    ngrams: int = Field(2, ge=1, le=5, description="Largest n: 2 means unigrams and bigrams (as DSIR).")
    num_buckets: int = Field(10_000, ge=1, le=1 << 24, description="Hash buckets (DSIR uses 10,000).")


class NgramFeatures(Feature):
    __doc__ = __doc__
    type_name = "ngram_features"
    version = 2  # 2: the count column is `n_tokens` (model tokens) or `n_words`, no longer `n_tokens` words
    Params = NgramFeaturesParams
    cost = "CPU: ~10-15 µs per 100-token document; memory ~ one batch"

    def check(self) -> list[str]:
        require_tokenizer(self.ctx.recipe)
        return []

    def columns(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return add_feature_columns(batch, self.params.ngrams, self.params.num_buckets,
                                   tokenizer=recipe_tokenizer(self.ctx.recipe))
