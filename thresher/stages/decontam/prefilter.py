"""The embedding method's prefilter: which parts of which rows can match a benchmark item at all.

A paraphrase or a number-substituted copy of an item keeps most of the item's content words
(names, objects, the rare nouns), so a row that shares few of them with every item cannot be
one. Each (row, segment) pair is scored by the IDF-weighted fraction of the segment's content
words found in the row — one sparse matrix product per batch — and for the best few segments
of a row that reach `min_overlap`, windows are cut around the span of the row that holds most
of that segment's distinct words: the span, the span run on to the next sentence ends and back
to its sentence's start, and the segment's own length around the densest run of its words.
Only those windows are embedded; the row scores its best.

Why several windows: a fixed 32-word window sees only part of a 60-word GSM8K question and
scores ~0.8 against it; a window of the item's length scores what a verbatim (or number-
substituted) copy scores, but around a shorter rewording it takes in the text on both sides,
and the last sentence of a question ("What did she earn?") often shares no content word with
the item, so a window cut to the matched words alone misses it. Measured on the 25 GSM8K
paraphrases in tests/stages/data, each put in the middle of a ~110-word pool row: the best of
these windows scores within 0.035 of the paraphrase alone (MiniLM, onnx int8), often higher.

Content words: lowercase runs of letters, 3+ long, not in scikit-learn's English stop-word
list; digits are left out on purpose (a substituted number must not cost overlap).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
from scipy import sparse

_WORD = re.compile(r"[a-z]{3,}")


@functools.lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
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
    idf: np.ndarray  # (vocab,)
    seg_size: np.ndarray  # (segments,): indexed content words of each segment


def build(seg_texts: list[str], max_df: float = 0.05, min_df_cap: int = 50) -> Prefilter:
    """Index the segments' content words. Words in more than max(min_df_cap, max_df * segments)
    segments are left out (templated words would make every row a candidate for every item)."""
    stop = stop_words()
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
    return Prefilter(vocab, weights, mass, seg_words, seg_vocab, stop, idf,
                     np.asarray([len(v) for v in seg_vocab], np.int64))


def candidate_windows(pf: Prefilter, texts: list[str], min_overlap: float, per_row: int,
                      slack: float = 1.5, min_words: int = 3) -> tuple[list[str], np.ndarray]:
    """Windows worth embedding: (window texts, row of each). For each of a row's `per_row` best
    segments that share at least `min_overlap` of their IDF mass and `min_words` distinct
    content words with it (all of them, for a segment with fewer; none with one): a row of at
    most `slack` times the segment's length is embedded whole; in a row longer than the segment
    the span that holds most of the segment's distinct words is found (`best_span`) and cut as
    several windows (`span_windows`). Rows with no candidate get none."""
    rows_words = [t.split() for t in texts]
    word_ids = [[[pf.vocab.get(cw, -1) for cw in content_words(w, pf.stop)] for w in ws] for ws in rows_words]
    r_idx, c_idx = [], []
    for r, ids in enumerate(word_ids):
        uniq = {i for wi in ids for i in wi if i >= 0}
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
    shared = (present @ (pf.weights > 0).astype(np.float32)).tocsr()  # distinct words shared
    overlap.sort_indices()
    shared.sort_indices()  # the same (row, segment) pattern as overlap: data arrays line up
    for r in range(len(texts)):
        lo, hi = overlap.indptr[r], overlap.indptr[r + 1]
        if lo == hi:
            continue
        frac, segs = overlap.data[lo:hi], overlap.indices[lo:hi]
        n_shared = shared.data[shared.indptr[r]:shared.indptr[r + 1]]
        # A segment with fewer indexed words than `min_words` (a short MATH problem) must have
        # them all; one with fewer than 2 cannot be told from chance.
        need = np.minimum(pf.seg_size[segs], min_words)
        ok = (frac >= min_overlap) & (n_shared >= need) & (need >= 2)
        if not ok.any():
            continue
        # Ranked by overlap, discounted below `min_words` shared words: a short segment matched
        # whole must not crowd out a longer one that matches most of its words.
        rank = frac[ok] * np.minimum(n_shared[ok] / min_words, 1.0)
        segs = segs[ok]
        best = segs[np.lexsort((segs, -rank))][:per_row]  # ties: lower segment first, deterministic
        words = rows_words[r]
        seen: set[str] = set()
        for s in best:
            length = int(pf.seg_words[s])
            wins = [texts[r]] if len(words) <= slack * length else []
            if len(words) > length:
                a, b = best_span(word_ids[r], pf.seg_vocab[s], pf.idf, int(slack * length))
                full = densest_start(word_ids[r], pf.seg_vocab[s], length)
                wins += [" ".join(words[x:y]) for x, y in span_windows(words, a, b, int(slack * length))]
                wins.append(" ".join(words[full:full + length]))
            for win in wins:
                if win and win not in seen:
                    seen.add(win)
                    out_text.append(win)
                    out_row.append(r)
    return out_text, np.asarray(out_row, np.int64)


def best_span(word_ids: list[list[int]], want: frozenset[int], idf: np.ndarray, max_len: int) -> tuple[int, int]:
    """[a, b): the span of at most `max_len` words, from a matched word to a matched word, that
    holds the most IDF mass of *distinct* segment words (the shortest of equal ones, then the
    first). Distinct, because a word the segment shares with the text around a copy ("months",
    "year") repeats there and would pull a count-based window off the copy."""
    pos = [i for i, ids in enumerate(word_ids) if any(j in want for j in ids)]
    if not pos:
        return 0, 0
    best = (-1.0, 0, 0, 0)
    for ia, a in enumerate(pos):
        got: set[int] = set()
        mass = 0.0
        for b in pos[ia:]:
            if b - a + 1 > max_len:
                break
            for j in word_ids[b]:
                if j in want and j not in got:
                    got.add(j)
                    mass += float(idf[j])
            key = (mass, -(b - a), -a)
            if key > best[:3]:
                best = (mass, -(b - a), -a, b + 1)
    a = -best[2]
    return a, best[3]


_END = re.compile(r"[.?!][\"')\]]*$")


def span_windows(words: list[str], a: int, b: int, max_len: int) -> list[tuple[int, int]]:
    """Windows around the matched span [a, b): the span itself (a rewording is rarely as long as
    the item, and text around it dilutes its vector), run on to each of the next three sentence
    ends and back to its sentence's start, as long as the window stays within `max_len` words
    (a question's last sentence, "What value did he get?", often shares no content word with
    the item). The caller adds a window of the item's own length around the densest run of its
    words: for a copy with changed numbers, which matches every content word, the copy itself."""
    ends = [b]
    e = b
    while e < len(words) and e - a < max_len and len(ends) < 4:
        e += 1
        if _END.search(words[e - 1]):
            ends.append(e)
    starts = [a]
    s = a
    while s > 0 and b - s < max_len:
        if _END.search(words[s - 1]):
            break
        s -= 1
    if s < a and (s == 0 or _END.search(words[s - 1])):
        starts.append(s)
    return [(x, y) for x in starts for y in ends]


def densest_start(word_ids: list[list[int]], want: frozenset[int], length: int) -> int:
    """Start of the `length`-word span holding most words of the segment (counting repeats);
    among equally dense spans, the one whose first and last words are closest to matched words
    (so a window does not drift into the text around a copy that shares a word or two)."""
    hit = np.asarray([any(j in want for j in ids) for ids in word_ids], bool)
    if len(hit) <= length or not hit.any():
        return 0
    csum = np.concatenate([[0], np.cumsum(hit)])
    counts = csum[length:] - csum[:-length]
    starts = np.flatnonzero(counts == counts.max())
    pos = np.flatnonzero(hit)
    ends = starts + length - 1
    nxt = pos[np.minimum(np.searchsorted(pos, starts), len(pos) - 1)]  # first hit at or after start
    prv = pos[np.maximum(np.searchsorted(pos, ends, side="right") - 1, 0)]  # last hit at or before end
    slack = np.abs(nxt - starts) + np.abs(ends - prv)
    return int(starts[np.argmin(slack)])  # argmin: the first of equal ones, deterministic
