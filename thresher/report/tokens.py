"""Token totals of a run's written shards, for the manifest's `tokens` entry and the report.

What counted is said with the numbers: `counted_by` is the recipe's tokenizer (`name`,
`sha256`, `kind`) when it has one — then the count column is `n_tokens`, model tokens — or
"words", the n-gram features' word/punctuation tokens in `n_words`. Totals are sums of that
column over the shards (one column read per shard, memory-mapped for Arrow IPC); a run whose
shards lack the column (no `ngram_features` or `tokenize` stage, or the column not kept)
states `column: null` and no totals rather than guessing, and shards on object storage are
not downloaded again to count (`total: null`, with `why`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from thresher.io import fs
from thresher.load import read_shard
from thresher.models.tokenizer import recipe_tokenizer

N_TOKENS, N_WORDS = "n_tokens", "n_words"
SOURCE = "source"


def counted_by(recipe: Any) -> dict[str, str] | str:
    """The recipe's tokenizer (name, sha256, kind), or "words" when it names none."""
    tok = recipe_tokenizer(recipe)
    return tok.describe() if tok is not None else "words"


def count_column(counted: dict[str, str] | str) -> str:
    return N_WORDS if counted == "words" else N_TOKENS


def sum_column(out_dir: str, shards: list[dict[str, Any]], column: str) -> tuple[dict[str, int], dict[str, int]]:
    """(rows per source, sum of `column` per source) over `shards` (paths relative to
    `out_dir`); without a `source` column everything is under ""."""
    rows: Counter = Counter()
    sums: Counter = Counter()
    for shard in shards:
        t = read_shard(fs.join(out_dir, shard["path"]))
        values = t.column(column)
        src = t.column(SOURCE) if SOURCE in t.column_names else pa.array([""] * t.num_rows, pa.string())
        grouped = pa.table({"s": src, "v": values}).group_by("s").aggregate([("v", "sum"), ([], "count_all")])
        for g in grouped.to_pylist():
            sums[g["s"]] += int(g["v_sum"] or 0)
            rows[g["s"]] += int(g["count_all"])
    return dict(rows), dict(sums)


def manifest_tokens(recipe: Any, out_dir: str, shards: list[dict[str, Any]],
                    schema_names: list[str]) -> dict[str, Any]:
    """The manifest's `tokens`: {counted_by, column, total, by_source: {source: {rows, tokens}}}
    (`column`, `total` and `by_source` null when the shards have no count column)."""
    counted = counted_by(recipe)
    column = count_column(counted)
    if not shards:
        return {"counted_by": counted, "column": column, "total": 0, "by_source": {}}
    if column not in schema_names:
        return {"counted_by": counted, "column": None, "total": None, "by_source": None}
    if fs.is_remote(out_dir):
        # Reading a shard back from object storage downloads all of it: not worth one column.
        return {"counted_by": counted, "column": column, "total": None, "by_source": None,
                "why": "shards on object storage are not read back to sum the column"}
    rows, sums = sum_column(out_dir, shards, column)
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
