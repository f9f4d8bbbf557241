"""Word n-grams of normalised text, hashed to uint64, and a sorted-array index of benchmark n-grams.

Normalisation (the same for pool rows and benchmark items): lowercase; apostrophes removed (so
"Janet's", "Janet’s" and "Janets" agree); every other run of characters that are not letters
or digits becomes one space. Words are the space-separated pieces.

Hashing is thresher's shared n-gram hasher (`thresher.text.hashing`): each distinct word of a
batch is hashed once (vectorised over its code points), and the k-grams at every word position
are k - 1 vectorised folding passes over those hashes; the shorter orders on the way give the
prefixes and whole short segments the lookup needs, at no extra pass. O(words x n) NumPy work
per batch — no per-n-gram Python. Written here rather than taken from a library because the
libraries we looked at (nltk's `ngrams`, datasketch, NeMo Curator's Python loop) build one
Python object per n-gram, which is ~100x slower than this. The hash values are internal: only
which n-grams are equal matters (matches, scores and audit spans).

The index is a sorted uint64 array of the benchmark's distinct grams with CSR postings
(gram -> benchmark segments), plus a bitset over the top bits of the hashes that rejects almost
every pool gram before the binary search. Its size is about 20 bytes per distinct benchmark
gram: it grows with the benchmarks, never with the pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core.columns import find_sorted, member
from thresher.text.hashing import orders, string_hashes, window_hashes

_U64 = np.uint64

_APOSTROPHES = r"['’‘`´]"
_NON_WORD = r"[^\p{L}\p{N}]+"


def normalise(texts: pa.Array) -> pa.Array:
    """Lowercase, apostrophes removed, other punctuation and whitespace folded to one space."""
    t = pc.utf8_lower(texts)
    t = pc.replace_substring_regex(t, _APOSTROPHES, "")
    t = pc.replace_substring_regex(t, _NON_WORD, " ")
    return pc.utf8_trim(t, " ")


def normalise_one(text: str) -> str:
    return normalise(pa.array([text], pa.string()))[0].as_py()


@dataclass
class Words:
    """The words of a batch of texts, flattened: `offsets[r]:offsets[r+1]` are row r's words."""

    hashes: np.ndarray  # uint64, one per word
    offsets: np.ndarray  # int64, n_rows + 1
    flat: pa.Array  # the words themselves (for audit spans)
    _room: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def room(self) -> np.ndarray:
        """Words from each position to the end of its row."""
        if self._room is None:
            self._room = np.repeat(self.offsets[1:], self.lengths) - np.arange(len(self.hashes))
        return self._room

    def span(self, start: int, end: int) -> str:
        return " ".join(self.flat[start:end].to_pylist())


def split_words(texts: pa.Array | pa.ChunkedArray) -> Words:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    t = normalise(texts)
    # An empty (or all-punctuation) text has no words; split would give it one empty word.
    t = pc.if_else(pc.equal(t, ""), pa.scalar(None, t.type), t)
    lists = pc.split_pattern(t, " ")
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(t) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return Words(np.zeros(0, _U64), offsets, flat)
    enc = pc.dictionary_encode(flat)
    return Words(string_hashes(enc.dictionary)[enc.indices.to_numpy(zero_copy_only=False)], offsets, flat)


def grams_at(words: Words, starts: np.ndarray, k: int) -> np.ndarray:
    """Hashes of the k-grams starting at the given (flat) word positions."""
    return window_hashes(words.hashes, starts, k)


def gram_starts(words: Words, k: int) -> np.ndarray:
    """Flat positions where a k-gram starts without crossing a row boundary."""
    return np.flatnonzero(words.room() >= k)


def all_grams(words: Words, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, hashes) of every k-gram inside a row."""
    starts = gram_starts(words, k)
    for m, g in orders(words.hashes, k):
        if m == k:
            return starts, g[starts]
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------
# The index


@dataclass
class NgramIndex:
    """Distinct benchmark grams -> the benchmark segments that contain them."""

    n: int
    keys: np.ndarray  # uint64, sorted, unique
    offsets: np.ndarray  # int64, len(keys) + 1: postings[offsets[i]:offsets[i+1]] hold key i
    postings: np.ndarray  # int32 segment numbers
    seg_total: np.ndarray  # int32: indexed grams per segment (the fraction's denominator)
    short_lengths: tuple[int, ...]  # word counts < n of segments matched whole
    # Sorted hashes of the first `min_words` words of those short segments: one cheap pass
    # over a row finds the few places where a whole short segment could start.
    min_words: int
    short_prefixes: np.ndarray
    filter_bits: int
    bitset: np.ndarray  # uint8, 2^filter_bits bits: is any key's top-bits prefix here?
    common_dropped: int = 0  # grams ignored because more than max_matches items share them

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.keys, self.offsets, self.postings, self.seg_total, self.bitset,
                                          self.short_prefixes)))

    def contains(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of hashes in the index, their key positions)."""
        if len(self.keys) == 0 or len(h) == 0:
            return np.zeros(len(h), bool), np.zeros(0, np.int64)
        slot = h >> _U64(64 - self.filter_bits)
        maybe = np.flatnonzero((self.bitset[slot >> _U64(3)] >> (slot & _U64(7)).astype(np.uint8)) & 1)
        hit, pos = find_sorted(h[maybe], self.keys)
        mask = np.zeros(len(h), bool)
        mask[maybe[hit]] = True
        return mask, pos[hit]


def _segment_grams(texts: list[str], n: int, min_words: int):
    """(distinct (gram, segment) pairs, short-segment prefixes, short lengths) of some segments."""
    words = split_words(pa.array(texts, pa.string()))
    lengths = words.lengths
    starts, grams = all_grams(words, n)
    hashes = [grams]
    segs = [words.row_of(starts)]
    short = np.flatnonzero((lengths >= min_words) & (lengths < n))
    short_lengths = [int(k) for k in np.unique(lengths[short])]
    prefixes = grams_at(words, words.offsets[short], min_words)
    for k in short_lengths:
        s = short[lengths[short] == k]
        hashes.append(grams_at(words, words.offsets[s], k))
        segs.append(s)
    h = np.concatenate(hashes)
    seg = np.concatenate(segs).astype(np.int64)
    order = np.lexsort((seg, h))
    h, seg = h[order], seg[order]
    keep = np.ones(len(h), bool)
    keep[1:] = (h[1:] != h[:-1]) | (seg[1:] != seg[:-1])
    return h[keep], seg[keep], prefixes, short_lengths


def build_index(texts: list[str], seg_item: np.ndarray, n: int, min_words: int,
                max_matches: int | None, chunk: int = 4096) -> NgramIndex:
    """Index benchmark segments. `seg_item[s]` is segment s's item number (for max_matches).

    Segments with at least n words contribute their distinct n-grams; segments with
    min_words..n-1 words contribute one gram, the whole segment; shorter ones nothing.
    """
    # In chunks of segments, so the temporaries (a few arrays per benchmark word) stay small.
    parts_h, parts_s, parts_p = [], [], []
    short_lengths_set: set[int] = set()
    for lo in range(0, len(texts), chunk):
        h, seg, prefixes, short_k = _segment_grams(texts[lo:lo + chunk], n, min_words)
        parts_h.append(h)
        parts_s.append(seg + lo)
        parts_p.append(prefixes)
        short_lengths_set.update(short_k)
    h = np.concatenate(parts_h) if parts_h else np.zeros(0, _U64)
    seg = np.concatenate(parts_s) if parts_s else np.zeros(0, np.int64)
    short_prefixes = np.unique(np.concatenate(parts_p)) if parts_p else np.zeros(0, _U64)
    short_lengths = tuple(sorted(short_lengths_set))
    order = np.lexsort((seg, h))
    h, seg = h[order], seg[order]
    common_dropped = 0
    if max_matches is not None and len(h):
        item = np.asarray(seg_item, np.int64)[seg]
        o = np.lexsort((item, h))
        hi, ii = h[o], item[o]
        new_item = np.ones(len(hi), bool)
        new_item[1:] = (hi[1:] != hi[:-1]) | (ii[1:] != ii[:-1])
        uh, inv = np.unique(hi, return_inverse=True)
        items_per_key = np.bincount(inv, weights=new_item).astype(np.int64)
        common = uh[items_per_key > max_matches]
        common_dropped = len(common)
        if common_dropped:
            ok = ~np.isin(h, common)
            h, seg = h[ok], seg[ok]
    keys, counts = np.unique(h, return_counts=True)
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    seg_total = np.bincount(seg, minlength=len(texts)).astype(np.int32)
    # ~64 filter bits per key: about 1.5% of absent grams get past the bitset.
    bits = int(min(max(np.ceil(np.log2(max(len(keys), 1) * 64)), 16), 34))
    bitset = np.zeros(1 << (bits - 3), np.uint8)
    if len(keys):
        slot = keys >> _U64(64 - bits)
        np.bitwise_or.at(bitset, (slot >> _U64(3)).astype(np.int64), (1 << (slot & _U64(7))).astype(np.uint8))
    return NgramIndex(n=n, keys=keys, offsets=offsets, postings=seg.astype(np.int32), seg_total=seg_total,
                      short_lengths=short_lengths, min_words=min_words, short_prefixes=short_prefixes,
                      filter_bits=bits, bitset=bitset,
                      common_dropped=common_dropped)


@dataclass
class Matches:
    """One entry per (row, segment) sharing at least one gram."""

    row: np.ndarray  # int64, row within the batch
    seg: np.ndarray  # int64
    found: np.ndarray  # int64: distinct grams of the segment found in the row
    fraction: np.ndarray  # float64: found / seg_total
    first: np.ndarray  # int64 flat word position of the first matched gram
    end: np.ndarray  # int64 flat word position after the last matched gram


def lookup(index: NgramIndex, words: Words) -> Matches:
    empty = np.zeros(0, np.int64)
    room = words.room()
    # One fold over every word position gives the k-grams for k = 1..n; the prefix length and
    # the short-segment lengths (all < n) are read off on the way to n.
    short = set(index.short_lengths)
    hits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    candidates = np.zeros(0, np.int64)
    for k, g in orders(words.hashes, index.n):
        if short and k == index.min_words:
            # The few places where a whole short segment could start.
            starts = gram_starts(words, k)
            candidates = starts[member(g[starts], index.short_prefixes)]
        if k == index.n or k in short:
            starts = gram_starts(words, k) if k == index.n else candidates[room[candidates] >= k]
            hit, keypos = index.contains(g[starts])
            hits[k] = (starts[hit], keypos)
    pos_parts, key_parts, len_parts = [], [], []
    for k in (index.n, *index.short_lengths):
        starts, keypos = hits[k]
        pos_parts.append(starts)
        key_parts.append(keypos)
        len_parts.append(np.full(len(keypos), k, np.int64))
    pos = np.concatenate(pos_parts) if pos_parts else empty
    if len(pos) == 0:
        return Matches(empty, empty, empty, np.zeros(0), empty, empty)
    key = np.concatenate(key_parts).astype(np.int64)
    glen = np.concatenate(len_parts)
    row = words.row_of(pos)
    # Expand each hit to every segment holding that gram.
    counts = index.offsets[key + 1] - index.offsets[key]
    rep = np.repeat(np.arange(len(key)), counts)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(counts) - counts, counts)
    seg = index.postings[index.offsets[key][rep] + within].astype(np.int64)
    row, k2, p, gl = row[rep], key[rep], pos[rep], glen[rep]
    # Group by (row, segment); count distinct keys (a gram repeated in a row counts once).
    order = np.lexsort((k2, seg, row))
    row, seg, k2, p, gl = row[order], seg[order], k2[order], p[order], gl[order]
    new_group = np.ones(len(row), bool)
    new_group[1:] = (row[1:] != row[:-1]) | (seg[1:] != seg[:-1])
    new_key = new_group.copy()
    new_key[1:] |= k2[1:] != k2[:-1]
    gstart = np.flatnonzero(new_group)
    found = np.add.reduceat(new_key.astype(np.int64), gstart)
    first = np.minimum.reduceat(p, gstart)
    end = np.maximum.reduceat(p + gl, gstart)
    g_seg = seg[gstart]
    fraction = found / np.maximum(index.seg_total[g_seg], 1)
    return Matches(row[gstart], g_seg, found, fraction, first, end)
