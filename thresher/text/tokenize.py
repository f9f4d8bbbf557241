"""DSIR's tokenisation, a batch of texts at once: exactly `re.findall(TOKEN_PATTERN, text.lower())`.

The pattern is the official DSIR package's (nltk's WordPunctTokenizer): runs of word
characters, and runs of characters that are neither word nor space. Rather than one regex
call (and one Python string) per text, a batch is one array of UTF-32 code points — taken
straight from an Arrow string array's UTF-8 buffer, or from one join of a list — lowercased
and classified with NumPy lookup tables, and cut into tokens wherever the class changes or a
text begins. The tables come from Python's own `str.lower` and `str.isalnum` / `str.isspace`
(what `re`'s `\\w` / `\\s` mean for `str`), filled once per distinct code point, so tokens
match `re` exactly (the tests check it on real data). `str.lower` maps every code point to
one code point on its own except two: `İ` (to two) and `Σ` (σ or ς by its neighbours); a
batch holding either is lowercased text by text with `str.lower` instead.

Cost: ~1-2 µs per 100 characters on one core (general_pool sentences, measured on a busy
2-core machine; an all-ASCII Arrow batch makes no Python string at all); memory ~ a few
bytes per character of the batch (its code points and their classes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TOKEN_PATTERN = r"\w+|[^\w\s]+"

# Character class per code point: 0 whitespace, 1 word (\w), 2 other; -1 not looked up yet.
SPACE, WORD, OTHER = 0, 1, 2
_CLASS = np.full(0x110000, -1, np.int8)
# Lowercase of each code point: -1 not looked up yet, CONTEXT when `str.lower` does not map it
# to one code point by itself (the batch then takes the per-text path).
UNKNOWN, CONTEXT = -1, -2
_LOWER = np.full(0x110000, UNKNOWN, np.int32)
_CAPITAL_SIGMA = "\u03a3"  # str.lower gives σ or ς (final sigma) by the letters around it


def class_of(ch: str) -> int:
    if ch.isalnum() or ch == "_":
        return WORD
    return SPACE if ch.isspace() else OTHER


def lower_of(ch: str) -> int:
    low = ch.lower()
    return ord(low) if len(low) == 1 and ch != _CAPITAL_SIGMA else CONTEXT


_CLASS[:128] = [class_of(chr(c)) for c in range(128)]
_LOWER[:128] = [lower_of(chr(c)) for c in range(128)]
_ASCII_LOWER = _LOWER[:128].astype(np.uint32)


def as_list(texts: Any) -> list[str]:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts.to_pylist()
    return list(texts)


def _look_up(table: np.ndarray, cp: np.ndarray) -> np.ndarray:
    # np.take with mode="clip" skips the bounds check fancy indexing makes (~1.5x faster);
    # every code point is within the tables.
    return np.take(table, cp, mode="clip")


def classes(cp: np.ndarray) -> np.ndarray:
    """The class (SPACE / WORD / OTHER) of each code point."""
    cls = _look_up(_CLASS, cp)
    if len(cls) and cls.min() < 0:
        for u in np.unique(cp[cls < 0]).tolist():
            _CLASS[u] = class_of(chr(u))
        cls = _look_up(_CLASS, cp)
    return cls


def lowered(cp: np.ndarray) -> np.ndarray | None:
    """The lowercase of each code point (uint32), or None when one of them has no
    context-free one-to-one lowercase."""
    if cp.dtype == np.uint8:  # ASCII
        return _look_up(_ASCII_LOWER, cp)
    low = _look_up(_LOWER, cp)
    if len(low) and low.min() < 0:
        for u in np.unique(cp[low == UNKNOWN]).tolist():
            _LOWER[u] = lower_of(chr(u))
        low = _look_up(_LOWER, cp)
        if low.min() < 0:
            return None
    return low.view(np.uint32)


@dataclass
class Tokens:
    """The tokens of a batch of texts: token t is `cp[starts[t]:ends[t]]`, in text `doc[t]`.

    Tokens are in text order, and in order within each text; text i's tokens are
    `bounds[i]:bounds[i+1]`."""

    cp: np.ndarray  # uint32: the lowercased texts' code points, one after another
    starts: np.ndarray  # int64 positions in `cp`
    ends: np.ndarray  # int64
    doc: np.ndarray  # int64: the text each token belongs to
    n_texts: int
    bounds: np.ndarray = field(default=None)  # int64 (n_texts + 1): each text's first token

    def __post_init__(self) -> None:
        if self.bounds is None:
            self.bounds = np.searchsorted(self.doc, np.arange(self.n_texts + 1))

    def counts(self) -> np.ndarray:
        """Tokens per text (int32)."""
        return np.diff(self.bounds).astype(np.int32)


def _utf8(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string array's (UTF-8 bytes uint8, offsets int64 from 0), no copy of the bytes."""
    width = np.int32 if arr.type == pa.string() else np.int64
    offsets = np.frombuffer(arr.buffers()[1], width, len(arr) + 1, arr.offset * np.dtype(width).itemsize)
    data = arr.buffers()[2]
    start, end = int(offsets[0]), int(offsets[-1])
    if data is None or end == start:
        return np.zeros(0, np.uint8), offsets.astype(np.int64) - start
    raw = np.frombuffer(data, np.uint8, end - start, start)
    return raw, offsets.astype(np.int64) - start


def _raw_code_points(texts: Any) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(code points before lowercasing: uint8 when all ASCII, else uint32; each text's first
    code point, n + 1 entries; the texts as a list when they had to be made one)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if (isinstance(texts, pa.Array) and texts.type in (pa.string(), pa.large_string())
            and texts.null_count == 0):
        raw, offsets = _utf8(texts)
        if not len(raw) or raw.max() < 0x80:
            return raw, offsets, None
        # One decode for the whole batch; a code point's position comes from UTF-8 lengths.
        cp = np.frombuffer(raw.tobytes().decode("utf-8", "surrogatepass").encode("utf-32-le", "surrogatepass"),
                           np.uint32)
        bounds = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(pc.utf8_length(texts).to_numpy(zero_copy_only=False), out=bounds[1:])
        return cp, bounds, None
    texts = as_list(texts)
    bounds = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=bounds[1:])
    joined = "".join(texts)
    if joined.isascii():
        return np.frombuffer(joined.encode("ascii"), np.uint8), bounds, texts
    # surrogatepass: a lone surrogate read from a file is one code point here too, as to `re`.
    return np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32), bounds, texts


def _per_text_lowered(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`str.lower` text by text (a batch with `İ` or `Σ`): code points and text bounds."""
    low = [t.lower() for t in texts]
    bounds = np.zeros(len(low) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, low), np.int64, len(low)), out=bounds[1:])
    return np.frombuffer("".join(low).encode("utf-32-le", "surrogatepass"), np.uint32), bounds


def tokenize(texts: Iterable[str] | pa.Array | pa.ChunkedArray) -> Tokens:
    """The `TOKEN_PATTERN` tokens of each lowercased text."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray, list)):
        texts = list(texts)
    raw, bounds, as_py = _raw_code_points(texts)
    cp = lowered(raw)
    if cp is None:
        cp, bounds = _per_text_lowered(as_py if as_py is not None else as_list(texts))
    n = len(bounds) - 1
    empty = np.zeros(0, np.int64)
    if len(cp) == 0:
        return Tokens(cp, empty, empty, empty, n, np.zeros(n + 1, np.int64))
    cls = classes(cp)
    # change[i]: a token may start at i / the one before may end at i — the class changes
    # there, or a text begins there (texts are not separated in `cp`).
    change = np.empty(len(cp) + 1, bool)
    change[0] = change[-1] = True
    np.not_equal(cls[1:], cls[:-1], out=change[1:-1])
    change[bounds[1:-1]] = True
    in_token = cls != SPACE
    starts = np.flatnonzero(change[:-1] & in_token)
    ends = np.flatnonzero(change[1:] & in_token) + 1
    tok_bounds = np.searchsorted(starts, bounds)
    doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(tok_bounds))
    return Tokens(cp, starts, ends, doc, n, tok_bounds)


def token_counts(texts: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Number of `TOKEN_PATTERN` tokens of each lowercased text (int32)."""
    return tokenize(texts).counts()
