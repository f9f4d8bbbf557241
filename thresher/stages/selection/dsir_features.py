"""DSIR's features of a batch as internal columns: the hashed n-gram occurrences of each row
and its counts, reused from an `ngram_features` stage's columns when they were made with
the same `ngrams` / `num_buckets` (and, for counts, the same tokenizer), else made here
(`thresher.text.ngrams`, the recipe's tokenizer).

Two counts: `N_TOKENS`, the unit of budgets, `min_tokens` and the report's token totals
(model tokens with the recipe's `tokenizer:`, else words), and, only with a tokenizer and
`length_normalize`, `N_WORDS`: the n-gram features' own word count, which log w is divided
by (the features are words, so the normalisation stays the same with or without a tokenizer).

The two forms score the same but are stored differently, and scores keep each form's own
summation order: reused columns are aggregated (bucket, count) pairs; hashed ones are the raw
occurrences (a bucket may repeat within a row, no count column, uint16 when `num_buckets`
<= 65,536), which need no sort.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from thresher.core import rows
from thresher.core.columns import set_columns
from thresher.models.tokenizer import TokenizerHandle
from thresher.stages.features import ngram_features as nf
from thresher.stages.selection import dsir
from thresher.text.ngrams import ngram_rows
from thresher.text.tokenize import token_counts

BUCKETS, COUNTS, N_TOKENS, N_WORDS = "__dsir_buckets", "__dsir_counts", "__dsir_n_tokens", "__dsir_n_words"
ROW_HASH = "__dsir_row_hash"  # only in `candidate_view`: the seeded hash of the row id
COLUMNS = (BUCKETS, COUNTS, N_TOKENS, N_WORDS)


def feature_columns(batch: pa.RecordBatch, ngrams: int, num_buckets: int,
                    tokenizer: TokenizerHandle | None = None, words: bool = False) -> dict[str, pa.Array]:
    """The internal columns for `batch` (no `COUNTS` when the text was hashed here; `N_WORDS`
    only when `words` is asked for and `N_TOKENS` is not already words)."""
    text = batch.column(rows.TEXT)
    n_words = None
    if nf.columns_match(batch.schema, ngrams, num_buckets):
        out = {BUCKETS: batch.column(nf.BUCKETS_COLUMN), COUNTS: batch.column(nf.COUNTS_COLUMN)}
        if nf.N_WORDS_COLUMN in batch.schema.names:
            n_words = batch.column(nf.N_WORDS_COLUMN).to_numpy(zero_copy_only=False)
    else:
        # uint16 buckets when they fit: the column crosses the runner's data plane to the
        # candidate and decision passes, and for short rows it is the batch's largest.
        indptr, buckets, n_words = ngram_rows(text, ngrams, num_buckets,
                                              np.uint16 if num_buckets <= 1 << 16 else np.int32)
        offsets = pa.array(indptr.astype(np.int32) if indptr[-1] < 2**31 else indptr)
        list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        out = {BUCKETS: list_type.from_arrays(offsets, pa.array(buckets))}
    if tokenizer is None or words:
        if n_words is None:
            n_words = token_counts(text)
        out[N_TOKENS if tokenizer is None else N_WORDS] = pa.array(n_words, pa.int32())
    if tokenizer is not None:
        reuse = nf.counted_by(batch.schema, tokenizer)
        out[N_TOKENS] = (batch.column(reuse).cast(pa.int32()) if reuse
                         else pa.array(tokenizer.count(text), pa.int32()))
    return out


def featurize(batch: pa.RecordBatch, ngrams: int, num_buckets: int,
              tokenizer: TokenizerHandle | None = None, words: bool = False) -> pa.RecordBatch:
    return set_columns(batch, feature_columns(batch, ngrams, num_buckets, tokenizer, words))


def candidate_view(batch: pa.RecordBatch, seed: int | None) -> pa.RecordBatch:
    """What the candidates pass reads of a featurised batch: each row's key, counts and
    features and (given a `seed`) the seeded hash of its id (`ROW_HASH`), nothing else.

    Made where the batch is featurised, so the pass that waits for the model reads a few bytes
    per n-gram instead of the whole batch (text, ids, provenance): the local runner copies
    every byte a later pass reads several times over, which cost more than the scoring. Rows
    under `min_tokens` stay in (a filter of the list columns costs more than their bytes)."""
    view = batch.select([rows.ROW_KEY] + [c for c in COLUMNS if c in batch.schema.names])
    if seed is not None:
        view = view.append_column(ROW_HASH, pa.array(dsir.row_hashes(batch.column(rows.ID), seed), pa.uint64()))
    return view


def n_tokens(batch: pa.RecordBatch) -> np.ndarray:
    """Counts in the budget's unit: model tokens with a tokenizer, else words."""
    return batch.column(N_TOKENS).to_numpy()


def n_words(batch: pa.RecordBatch) -> np.ndarray:
    """Word counts (length normalisation): `N_WORDS` when the budget unit is model tokens."""
    return batch.column(N_WORDS if N_WORDS in batch.schema.names else N_TOKENS).to_numpy()


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
    # Straight from the list columns (Arrow's filter takes the masked rows' lists whole): no
    # per-occurrence row index is needed to add them up.
    b = batch.column(BUCKETS)
    c = batch.column(COUNTS) if COUNTS in batch.schema.names else None
    if mask is not None:
        b = b.filter(mask)
        c = c.filter(mask) if c is not None else None
    b = b.flatten().to_numpy(zero_copy_only=False)
    c = c.flatten().to_numpy(zero_copy_only=False) if c is not None else None
    if c is None:
        return np.bincount(b, minlength=num_buckets).astype(np.int64)
    return np.bincount(b, weights=c, minlength=num_buckets).astype(np.int64)
