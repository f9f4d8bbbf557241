"""Token totals of a run's written rows, for the manifest's `tokens` entry and the report.

What counted is said with the numbers: `counted_by` is the recipe's tokenizer (`name`,
`sha256`, `kind`) when it has one — then the count column is `n_tokens`, model tokens — or
"words", the n-gram features' word/punctuation tokens in `n_words`. Totals come from the
`written_sum/<column>/<source>` counters the shard writer keeps as it writes each partition
(`core.counters.sum_by_source`): counted before packing and `output.columns`, so a packed run or
one that drops the column still has its totals, and shards are never read back (remote or
Parquet alike). A run whose written rows never had the column (no `ngram_features` or `tokenize`
stage) states `column: null` and no totals rather than guessing.
"""

from __future__ import annotations

from typing import Any

from thresher.core.counters import written_sums
from thresher.models.tokenizer import recipe_tokenizer

N_TOKENS, N_WORDS = "n_tokens", "n_words"


def counted_by(recipe: Any) -> dict[str, str] | str:
    """The recipe's tokenizer (name, sha256, kind), or "words" when it names none."""
    tok = recipe_tokenizer(recipe)
    return tok.describe() if tok is not None else "words"


def count_column(counted: dict[str, str] | str) -> str:
    return N_WORDS if counted == "words" else N_TOKENS


def manifest_tokens(recipe: Any, counters: dict[str, int], rows_written: int) -> dict[str, Any]:
    """The manifest's `tokens`: {counted_by, column, total, by_source: {source: {rows, tokens}}}
    (`column`, `total` and `by_source` null when the written rows had no count column)."""
    counted = counted_by(recipe)
    column = count_column(counted)
    if not rows_written:
        return {"counted_by": counted, "column": column, "total": 0, "by_source": {}}
    got = written_sums(counters, column)
    if got is None:
        return {"counted_by": counted, "column": None, "total": None, "by_source": None}
    rows, sums = got
    return {"counted_by": counted, "column": column, "total": sum(sums.values()),
            "by_source": {s: {"rows": rows[s], "tokens": sums[s]} for s in sorted(sums)}}


def unit_label(counted: dict[str, str] | str | None) -> str:
    """How the report names what was counted."""
    if not isinstance(counted, dict):
        return "words (word/punctuation tokens: no `tokenizer:` in the recipe)"
    return f"model tokens of tokenizer {counted.get('name')!r} (sha256 {str(counted.get('sha256'))[:12]}…)"


def counted_by_line(counted: dict[str, str] | str | None) -> str:
    """One sentence for the report: the tokenizer's name and full sha256, or words."""
    if isinstance(counted, dict):
        return (f"Token counts are model tokens of the recipe's tokenizer {counted.get('name')!r} "
                f"(sha256 {counted.get('sha256')}), without special tokens.")
    return "Counts are words (word/punctuation tokens, column n_words): the recipe names no tokenizer."


def short_unit(counted: dict[str, str] | str | None) -> str:
    """A stage report's unit for a table cell: the tokenizer's name, "words", or "" (unknown)."""
    if isinstance(counted, dict):
        return f"tokens of {counted.get('name')}"
    return "words" if counted == "words" else ""
