"""DSIR's features of a batch as internal columns: the hashed n-gram occurrences of each row
and its token count, reused from an `ngram_features` stage's columns when they were made with
the same `ngrams` / `num_buckets`, else hashed here (`thresher.text.ngrams`).

The two forms score the same but are stored differently, and scores keep each form's own
summation order: reused columns are aggregated (bucket, count) pairs; hashed ones are the raw
occurrences (a bucket may repeat within a row, no count column), which need no sort.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from thresher.core import rows
from thresher.core.columns import set_columns
from thresher.stages.features import ngram_features as nf
from thresher.text.ngrams import ngram_rows
from thresher.text.tokenize import token_counts

BUCKETS, COUNTS, N_TOKENS = "__dsir_buckets", "__dsir_counts", "__dsir_n_tokens"
COLUMNS = (BUCKETS, COUNTS, N_TOKENS)


def feature_columns(batch: pa.RecordBatch, ngrams: int, num_buckets: int) -> dict[str, pa.Array]:
    """The internal columns for `batch` (no `COUNTS` when the text was hashed here)."""
    if nf.columns_match(batch.schema, ngrams, num_buckets):
        if nf.N_TOKENS_COLUMN in batch.schema.names:
            ntok = batch.column(nf.N_TOKENS_COLUMN).cast(pa.int32())
        else:
            ntok = pa.array(token_counts(batch.column(rows.TEXT)), pa.int32())
        return {BUCKETS: batch.column(nf.BUCKETS_COLUMN), N_TOKENS: ntok, COUNTS: batch.column(nf.COUNTS_COLUMN)}
    indptr, buckets, n_tokens = ngram_rows(batch.column(rows.TEXT), ngrams, num_buckets)
    offsets = pa.array(indptr.astype(np.int32) if indptr[-1] < 2**31 else indptr)
    list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
    return {BUCKETS: list_type.from_arrays(offsets, pa.array(buckets, pa.int32())),
            N_TOKENS: pa.array(n_tokens, pa.int32())}


def featurize(batch: pa.RecordBatch, ngrams: int, num_buckets: int) -> pa.RecordBatch:
    return set_columns(batch, feature_columns(batch, ngrams, num_buckets))


def n_tokens(batch: pa.RecordBatch) -> np.ndarray:
    return batch.column(N_TOKENS).to_numpy()


def occurrences(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(row of each occurrence int64, bucket int32, count int32 or None when unaggregated)."""
    if COUNTS in batch.schema.names:
        return nf.sparse_from_columns(batch.column(BUCKETS), batch.column(COUNTS))
    b = batch.column(BUCKETS)
    offsets = b.offsets.to_numpy()
    row = np.repeat(np.arange(len(b), dtype=np.int64), np.diff(offsets - offsets[0]))
    return row, b.flatten().to_numpy(), None


def bucket_counts(batch: pa.RecordBatch, num_buckets: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Bucket counts (int64) over the rows of `batch` (those where `mask` is set)."""
    row, b, c = occurrences(batch)
    if mask is not None:
        keep = mask[row]
        b = b[keep]
        c = c[keep] if c is not None else None
    if c is None:
        return np.bincount(b, minlength=num_buckets).astype(np.int64)
    return np.bincount(b, weights=c, minlength=num_buckets).astype(np.int64)
