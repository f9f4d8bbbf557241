"""Lines and paragraphs of a batch of texts, in Arrow, and the per-row duplicate counts the rules take."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# What Python's str.splitlines() splits on (RE2 syntax), which datatrove's Gopher quality and C4 rules use.
SPLITLINES = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}]"
# What Python's str.strip()/lstrip()/rstrip() remove, for RE2 anchors.
PY_SPACE = r"[\s\x0b\x1c-\x1f\x{85}\p{Z}]"


@dataclass
class Parts:
    """The parts (lines, paragraphs) of each row, flat: part `i` belongs to row `row[i]`."""

    flat: pa.Array
    row: np.ndarray
    count: np.ndarray  # parts per row
    n_rows: int

    def per_row(self, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(self.row[mask], weights=w, minlength=self.n_rows)

    def matches(self, pattern: str) -> np.ndarray:
        return pc.match_substring_regex(self.flat, pattern).to_numpy(zero_copy_only=False)

    def only(self, mask: np.ndarray) -> Parts:
        return Parts(self.flat.filter(pa.array(mask)), self.row[mask],
                     np.bincount(self.row[mask], minlength=self.n_rows), self.n_rows)


def parts(texts: pa.Array, split: pa.Array) -> Parts:
    """`split` is `texts` split into a list per row (any pyarrow split kernel's output)."""
    return Parts(pc.list_flatten(split), pc.list_parent_indices(split).to_numpy(),
                 pc.list_value_length(split).to_numpy(zero_copy_only=False).astype(np.int64), len(texts))


def splitlines(texts: pa.Array) -> Parts:
    """As `str.splitlines()`: a line break at the very end makes no extra empty line; "" has no lines."""
    split = pc.split_pattern_regex(texts, SPLITLINES)
    p = parts(texts, split)
    ends = pc.match_substring_regex(texts, f"(?:{SPLITLINES})$").to_numpy(zero_copy_only=False)
    empty = pc.equal(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False)
    drop_last = ends | empty
    if drop_last.any():
        last = np.cumsum(p.count) - 1
        keep = np.ones(len(p.flat), bool)
        keep[last[drop_last]] = False
        p = p.only(keep)
    return p


def duplicates(p: Parts) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many parts equal an earlier part of the same row, and their characters — datatrove's
    `find_duplicates` (the first occurrence is not a duplicate)."""
    n = p.n_rows
    if len(p.flat) == 0:
        return np.zeros(n, np.int64), np.zeros(n)
    ids = pc.dictionary_encode(p.flat).indices.to_numpy().astype(np.int64)
    _, dup = first_seen(p.row.astype(np.int64) * (int(ids.max()) + 1) + ids)
    dup = ~dup
    chars = pc.utf8_length(p.flat).to_numpy().astype(np.float64)
    return p.per_row(dup).astype(np.int64), p.per_row(dup, chars)


def first_seen(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per element, numbered in order of first appearance; True where an element is the first of
    its group) — by Arrow's hash-based dictionary encoding, no sort."""
    if len(key) == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    gid = pc.dictionary_encode(pa.array(key)).indices.to_numpy().astype(np.int64)
    prev_max = np.maximum.accumulate(np.concatenate([[-1], gid[:-1]]))
    return gid, gid > prev_max


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (a rule never fires on an undefined ratio)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def lengths(texts: pa.Array) -> np.ndarray:
    return pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.float64)
