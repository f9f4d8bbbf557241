"""The embedding method's prefilter: which parts of which rows can match a benchmark item at all.

A paraphrase or a number-substituted copy of an item keeps most of the item's content words
(names, objects, the rare nouns), so a row that shares few of them with every item cannot be
one. Each (row, segment) pair is scored by the IDF-weighted fraction of the segment's content
words found in the row — one sparse matrix product per batch — and for the best few segments
of a row that reach `min_overlap`, windows are cut around the region of the row that holds
most of that segment's words: one as long as the segment, one trimmed to the matched words
(for a rewording of another length). Only those windows are embedded.

Why windows cut to the segment's length: a fixed 32-word window sees only part of a 60-word
GSM8K question and scores ~0.8 against it; a window of the item's own length around the
matching region scores what the whole planted copy scores.

Content words: lowercase runs of letters, 3+ long, not in scikit-learn's English stop-word
list; digits are left out on purpose (a substituted number must not cost overlap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import sparse

_WORD = re.compile(r"[a-z]{3,}")


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def content_words(text: str, stop: frozenset[str]) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in stop]


@dataclass
class Prefilter:
    vocab: dict[str, int]
    weights: sparse.csr_matrix  # (vocab, segments): idf of the word where the segment has it
    mass: np.ndarray  # (segments,): the segment's total idf: overlap is a fraction of it
    seg_words: np.ndarray  # (segments,): whitespace words of each segment (the window length)
    seg_vocab: list[frozenset[int]]
    stop: frozenset[str]


def build(seg_texts: list[str], max_df: float = 0.05, min_df_cap: int = 50) -> Prefilter:
    """Index the segments' content words. Words in more than max(min_df_cap, max_df * segments)
    segments are left out (templated words would make every row a candidate for every item)."""
    stop = _stop_words()
    per_seg = [sorted(set(content_words(t, stop))) for t in seg_texts]
    df: dict[str, int] = {}
    for ws in per_seg:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    cap = max(min_df_cap, int(max_df * len(seg_texts)))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c <= cap))}
    n = max(len(seg_texts), 1)
    idf = np.asarray([np.log((1 + n) / (1 + df[w])) + 1.0 for w in vocab], np.float32)
    rows, cols = [], []
    seg_vocab = []
    for s, ws in enumerate(per_seg):
        ids = [vocab[w] for w in ws if w in vocab]
        seg_vocab.append(frozenset(ids))
        rows += ids
        cols += [s] * len(ids)
    rows_a, cols_a = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    weights = sparse.csr_matrix((idf[rows_a], (rows_a, cols_a)), shape=(len(vocab), len(seg_texts)))
    mass = np.asarray(weights.sum(axis=0)).ravel()
    seg_words = np.asarray([len(t.split()) for t in seg_texts], np.int64)
    return Prefilter(vocab, weights, mass, seg_words, seg_vocab, stop)


def candidate_windows(pf: Prefilter, texts: list[str], min_overlap: float, per_row: int,
                      slack: float = 1.5) -> tuple[list[str], np.ndarray]:
    """Windows worth embedding: (window texts, row of each). A row of at most `slack` times a
    candidate segment's length is embedded whole; a longer one gets a window of the segment's
    length around the densest run of the segment's words, and that run trimmed to its first and
    last matched words within 1.5x the length. Rows with no candidate get none."""
    row_ids: list[list[int]] = []
    r_idx, c_idx = [], []
    for r, t in enumerate(texts):
        ids = [pf.vocab.get(w, -1) for w in content_words(t or "", pf.stop)]
        row_ids.append(ids)
        uniq = {i for i in ids if i >= 0}
        r_idx += [r] * len(uniq)
        c_idx += sorted(uniq)
    out_text: list[str] = []
    out_row: list[int] = []
    if not r_idx or not pf.vocab:
        return out_text, np.zeros(0, np.int64)
    present = sparse.csr_matrix((np.ones(len(r_idx), np.float32), (r_idx, c_idx)),
                                shape=(len(texts), len(pf.vocab)))
    overlap = (present @ pf.weights).tocsr()  # (rows, segments): idf mass shared
    overlap = overlap.multiply(1.0 / np.maximum(pf.mass, 1e-9)).tocsr()
    for r in range(len(texts)):
        lo, hi = overlap.indptr[r], overlap.indptr[r + 1]
        if lo == hi:
            continue
        frac, segs = overlap.data[lo:hi], overlap.indices[lo:hi]
        ok = frac >= min_overlap
        if not ok.any():
            continue
        frac, segs = frac[ok], segs[ok]
        best = segs[np.lexsort((segs, -frac))][:per_row]  # ties: lower segment first, deterministic
        words = texts[r].split()
        seen: set[str] = set()
        for s in best:
            length = int(pf.seg_words[s])
            if len(words) <= slack * length:
                wins = [texts[r]]
            else:
                wins = [" ".join(words[_densest_start(words, pf, s, length):][:length]),
                        _tight_window(words, pf, s, int(slack * length))]
            for win in wins:
                if win and win not in seen:
                    seen.add(win)
                    out_text.append(win)
                    out_row.append(r)
    return out_text, np.asarray(out_row, np.int64)


def _tight_window(words: list[str], pf: Prefilter, seg: int, length: int) -> str:
    """The densest `length`-word span trimmed to its first..last matched word: a reworded copy
    is rarely as long as the item, and the text around it dilutes its vector."""
    start = _densest_start(words, pf, seg, length)
    span = words[start:start + length]
    hit = np.flatnonzero(_hits(span, pf, seg))
    return " ".join(span[hit[0]:hit[-1] + 1]) if len(hit) else ""


def _hits(words: list[str], pf: Prefilter, seg: int) -> np.ndarray:
    want = pf.seg_vocab[seg]
    return np.asarray([any(pf.vocab.get(cw, -1) in want for cw in content_words(w, pf.stop))
                       for w in words], bool)


def _densest_start(words: list[str], pf: Prefilter, seg: int, length: int) -> int:
    """Start of the `length`-word span of `words` holding most of segment `seg`'s content words;
    among equally dense spans, the one whose first and last words are closest to matched words
    (so a window does not drift into the text around a copy that shares a word or two)."""
    hit = _hits(words, pf, seg)
    if len(words) <= length:
        return 0
    csum = np.concatenate([[0], np.cumsum(hit)])
    counts = csum[length:] - csum[:-length]
    starts = np.flatnonzero(counts == counts.max())
    pos = np.flatnonzero(hit)
    if not len(pos):
        return 0
    ends = starts + length - 1
    nxt = pos[np.minimum(np.searchsorted(pos, starts), len(pos) - 1)]  # first hit at or after start
    prv = pos[np.maximum(np.searchsorted(pos, ends, side="right") - 1, 0)]  # last hit at or before end
    slack = np.abs(nxt - starts) + np.abs(ends - prv)
    return int(starts[np.argmin(slack)])  # argmin: the first of equal ones, deterministic
