"""Gopher repetition scores (Rae et al. 2021, Table A1), computed as datatrove 0.10's
`GopherRepetitionFilter` computes them, for a whole batch at once: n-grams are hashed token-id windows
(NumPy); one sort per n finds the n-grams a row repeats, and only those are grouped."""

from __future__ import annotations

import bisect

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.stages.quality.text_parts import duplicates, lengths, parts, ratio
from thresher.stages.quality.words import Words

TOP_NGRAMS = (2, 3, 4)  # "top n-gram character fraction" (Table A1)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)  # "duplicate n-gram character fraction" (Table A1)
# Odd 64-bit multiplier of the polynomial window hash (collisions ~2^-64 per pair of distinct n-grams).
_MULT = np.uint64(0x9E3779B97F4A7C15)


def repetition_scores(texts: pa.Array, words: Words, top_ns=TOP_NGRAMS, dup_ns=DUP_NGRAMS) -> dict[str, np.ndarray]:
    n_chars = lengths(texts)
    paras = parts(texts, pc.split_pattern_regex(pc.utf8_trim_whitespace(texts), r"\n\n+"))
    lines = parts(texts, pc.split_pattern_regex(texts, r"\n+"))
    para_dups, para_chars = duplicates(paras)
    line_dups, line_chars = duplicates(lines)
    out = {
        "q_dup_para_frac": ratio(para_dups, paras.count),
        "q_dup_para_char_frac": ratio(para_chars, n_chars),
        "q_dup_line_frac": ratio(line_dups, lines.count),
        "q_dup_line_char_frac": ratio(line_chars, n_chars),
    }
    zero = ratio(np.zeros(words.n_rows), n_chars)  # no n-token window: datatrove scores 0 (or skips)
    out.update({f"q_top_{n}gram_frac": zero for n in top_ns} | {f"q_dup_{n}gram_frac": zero for n in dup_ns})
    for n, windows in _all_windows(words, max((*top_ns, *dup_ns), default=0)):
        if n in top_ns:
            out[f"q_top_{n}gram_frac"] = ratio(_top_ngram_chars(words.n_rows, n, *windows), n_chars)
        if n in dup_ns:
            out[f"q_dup_{n}gram_frac"] = ratio(_duplicate_ngram_chars(words.n_rows, n, *windows), n_chars)
    return out


def _all_windows(words: Words, max_n: int):
    """For n = 2..max_n, every n-token window inside one row: (row, hash, characters of its tokens, first
    token), in token order. The hash of the n-window at i extends the (n-1)-window's: one vector step per n."""
    t = len(words.ids)
    ids = words.ids.astype(np.uint64) + np.uint64(1)
    csum = np.concatenate([[0], np.cumsum(words.length)])
    h = ids.copy()
    for n in range(2, max_n + 1):
        if t < n:
            return
        with np.errstate(over="ignore"):
            h = h[:t - n + 1] * _MULT + ids[n - 1:]
        start = np.flatnonzero(words.doc[:t - n + 1] == words.doc[n - 1:])
        yield n, (words.doc[start], h[start], csum[start + n] - csum[start], start)


def _repeated(doc: np.ndarray, h: np.ndarray):
    """The windows whose n-gram occurs again in the same row — usually few, so the rest never reaches
    a grouping step: (their indices, in order; a group id each; True at each group's first occurrence;
    the number of groups). The row is mixed into the hash so a plain sort finds them."""
    with np.errstate(over="ignore"):
        key = h ^ (doc.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    s = np.sort(key)
    values = np.unique(s[1:][s[1:] == s[:-1]])
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), 0
    pos = np.minimum(np.searchsorted(values, key), len(values) - 1)
    idx = np.flatnonzero(values[pos] == key)
    gid = pos[idx]
    is_first = np.zeros(len(idx), bool)
    is_first[np.unique(gid, return_index=True)[1]] = True
    return idx, gid, is_first, len(values)


def _top_ngram_chars(n_rows: int, n: int, doc: np.ndarray, h: np.ndarray, chars: np.ndarray,
                     start: np.ndarray) -> np.ndarray:
    """Per row: count x length of its most frequent n-gram (" "-joined), ties to the one seen first —
    `Counter.most_common(1)` in datatrove's `find_top_duplicate`. A row with no repeated n-gram: its
    first n-gram, once."""
    out = np.zeros(n_rows)
    if len(h) == 0:
        return out
    row_first = np.flatnonzero(np.concatenate([[True], doc[1:] != doc[:-1]]))
    out[doc[row_first]] = chars[row_first] + n - 1
    idx, gid, is_first, n_groups = _repeated(doc, h)
    if n_groups == 0:
        return out
    counts = np.bincount(gid, minlength=n_groups)
    g_first = np.zeros(n_groups, np.int64)
    g_first[gid[is_first]] = idx[is_first]  # window where each repeated n-gram first occurs
    g_doc = doc[g_first]
    best = np.lexsort((g_first, -counts, g_doc))
    pick = best[np.concatenate([[True], g_doc[best][1:] != g_doc[best][:-1]])]
    out[g_doc[pick]] = counts[pick] * (chars[g_first[pick]] + n - 1)
    return out


def _duplicate_ngram_chars(n_rows: int, n: int, doc: np.ndarray, h: np.ndarray, chars: np.ndarray,
                           start: np.ndarray) -> np.ndarray:
    """Per row: characters of n-grams that repeat an earlier one, scanning left to right and jumping n
    tokens past each repeat — datatrove's `find_all_duplicate`. Only windows whose n-gram occurred
    before can be repeats, so the scan (a Python loop) visits just those: a window is a repeat unless a
    jump skipped it, or every earlier occurrence of its n-gram was itself skipped."""
    idx, gid, is_first, n_groups = _repeated(doc, h)
    if n_groups == 0:
        return np.zeros(n_rows)
    first = np.zeros(n_groups, np.int64)
    first[gid[is_first]] = start[idx[is_first]]  # token where each repeated n-gram first occurs
    first = first.tolist()
    later = idx[~is_first]
    repeats: list[int] = []  # tokens where a repeat was counted; a jump skips the n-1 after each
    found_late: set[int] = set()  # n-grams whose first occurrence was skipped, seen later
    counted = np.zeros(len(later), bool)
    last = -n
    for k, (s, g) in enumerate(zip(start[later].tolist(), gid[~is_first].tolist(), strict=True)):
        if s - last < n:
            continue  # jumped over (token positions of different rows are >= n apart)
        f = first[g]
        j = bisect.bisect_left(repeats, f) - 1
        if (j < 0 or f - repeats[j] >= n) or g in found_late:
            counted[k] = True
            repeats.append(s)
            last = s
        else:
            found_late.add(g)
    return np.bincount(doc[later][counted], weights=chars[later][counted], minlength=n_rows)
