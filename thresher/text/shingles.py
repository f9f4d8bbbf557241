"""Shingles for near-duplicate detection: hashed word or character n-grams of a batch of texts.

* `word`: words are runs of word characters (`str.isalnum` or `_`, as `re`'s `\\w`);
  punctuation and whitespace only separate them (datatrove's MinHash also drops punctuation
  before it shingles). A shingle is `n` consecutive words.
* `char`: whitespace runs are folded to one space and the ends trimmed; a shingle is `n`
  consecutive characters.

A text with fewer than `n` words (characters) but at least one gets one shingle: all of it, so
short identical texts still match. An empty text has none.

Hashes come from the shared hasher (`thresher.text.hashing`): a word is hashed like a token
there and an n-gram folds its words' hashes, all vectorised over the batch's code points.

Cost: a few NumPy passes over the batch's code points and words (~3-10 µs per 100 characters);
memory ~ 24 bytes per character of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.text.hashing import U64, extend, span_hashes, window_hashes
from thresher.text.tokenize import WORD, classes

Mode = Literal["word", "char"]


def _code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts joined by '\\n' as UTF-32 code points; each text's start and length."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    starts = np.zeros(len(texts), np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    # surrogatepass: a lone surrogate read from a file is one code point, as in `tokenize`.
    cp = np.frombuffer("\n".join(texts).encode("utf-32-le", "surrogatepass"), np.uint32)
    return cp, starts, lengths


def _spans(counts: np.ndarray, ngram: int, hashes_of_windows, whole_of_short):
    """Shared tail of both modes, given each text's number of units (words or characters):
    full windows for texts with >= `ngram` units, one whole-text shingle for shorter non-empty
    ones; (hashes, doc) sorted by doc."""
    h_full, d_full = hashes_of_windows()
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if len(short) == 0:
        return h_full, d_full
    h_short = whole_of_short(short, counts[short])
    h = np.concatenate([h_full, h_short])
    d = np.concatenate([d_full, short])
    order = np.argsort(d, kind="stable")
    return h[order], d[order]


def _word_shingles(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    cp, text_starts, _ = _code_points(texts)
    if len(cp) == 0:
        return np.zeros(0, U64), np.zeros(0, np.int64)
    is_word = classes(cp) == WORD
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    doc = np.searchsorted(text_starts, starts, side="right") - 1
    words = span_hashes(cp, starts, ends)
    first = np.searchsorted(doc, np.arange(len(texts)))  # each text's first word

    def windows():
        at = np.arange(max(len(words) - ngram + 1, 0))
        at = at[doc[at] == doc[at + ngram - 1]]  # windows inside one text
        return window_hashes(words, at, ngram), doc[at]

    def whole(short, counts):
        # Fold each short text's words left to right, stopping at its own length.
        f = first[short]
        g = words[f]
        for j in range(1, int(counts.max())):
            more = j < counts
            g[more] = extend(g[more], words[f[more] + j])
        return g

    return _spans(np.bincount(doc, minlength=len(texts)), ngram, windows, whole)


def _char_shingles(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    cp, text_starts, lengths = _code_points(texts)
    if len(cp) == 0:
        return np.zeros(0, U64), np.zeros(0, np.int64)
    def windows():
        per_text = np.maximum(lengths - ngram + 1, 0)
        d = np.repeat(np.arange(len(texts)), per_text)
        offset = np.arange(len(d)) - np.repeat(np.cumsum(per_text) - per_text, per_text)
        s = text_starts[d] + offset
        return span_hashes(cp, s, s + ngram), d

    def whole(short, counts):
        return span_hashes(cp, text_starts[short], text_starts[short] + counts)

    return _spans(lengths, ngram, windows, whole)


def shingle_hashes(texts: Iterable[str] | Any, ngram: int, mode: Mode = "word",
                   lowercase: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every shingle of every text: (hashes uint64, text index int64), grouped by text in text
    order (a shingle repeated in a text appears each time)."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(list(texts), pa.string())
    texts = pc.fill_null(texts, "")
    if mode == "char":
        texts = pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"\s+", " "))
    if lowercase:
        texts = pc.utf8_lower(texts)
    texts = texts.to_pylist()
    if not texts:
        return np.zeros(0, U64), np.zeros(0, np.int64)
    if mode == "word":
        return _word_shingles(texts, ngram)
    if mode == "char":
        return _char_shingles(texts, ngram)
    raise ValueError(f"shingle mode must be 'word' or 'char', not {mode!r}")


def shingle_sets(texts: Iterable[str] | Any, ngram: int, mode: Mode = "word",
                 lowercase: bool = True) -> list[np.ndarray]:
    """Each text's distinct shingle hashes, sorted (for exact Jaccard similarity)."""
    texts = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else list(texts)
    h, d = shingle_hashes(texts, ngram, mode, lowercase)
    bounds = np.searchsorted(d, np.arange(len(texts) + 1))
    return [np.unique(h[bounds[i]:bounds[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted sets of distinct hashes (1.0 for two empty sets)."""
    union = len(a) + len(b)
    if union == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (union - inter)
