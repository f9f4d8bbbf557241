"""Words of a batch of texts, as one flat token table — the tokenisation every word-based rule shares.

The Gopher/FineWeb rules count "words" the way datatrove's English filters do: spaCy's English tokenizer
(`spacy.blank("en")`) with whitespace tokens dropped. spaCy itself is not used here: importing it costs
1-4 s and ~15 packages, and calling it per document is what makes datatrove's filters slow. spaCy's
tokenisation is context-free per whitespace-separated chunk, so this module splits the whole batch on
whitespace in Arrow, finds the batch's distinct chunks, and tokenises only chunks it has not seen before,
with spaCy's English algorithm (special cases, then prefixes/suffixes, then URL, then infixes) re-written
with the same rules (`tokenizer_data.py` holds spaCy's exception list and URL pattern). Symbol classes
are approximated by Unicode categories (`\\p{So}`, `\\p{L}`, ...), so rare scripts may split differently;
bench/filters.py measures the agreement with datatrove.
"""

from __future__ import annotations

import itertools
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from thresher.stages.quality.tokenizer_data import (
    KEEP_WHOLE,
    PUNCTUATION_CHARS,
    SENTENCE_PUNCT,
    SPECIAL_CASES,
    URL_PATTERN,
)

# spaCy 3.8 English punctuation rules (spacy/lang/punctuation.py, spacy/lang/en/punctuation.py).
_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_PUNCT = ["…", "……", ",", ":", ";", r"\!", r"\?", "¿", "؟", "¡", r"\(", r"\)", r"\[", r"\]", r"\{", r"\}", "<",
          ">", "_", "#", r"\*", "&", "。", "？", "！", "，", "、", "；", "：", "～", "·", "।", "،", "۔", "؛", "٪"]
_ELLIPSES = [r"\.\.+", "…"]
_QUOTE_LIST = [regex.escape(q) for q in _QUOTES]
_CURRENCY = r"\$|£|€|¥|฿|US\$|C\$|A\$|[₠-₿]|﷼"
_UNITS = ("km|km²|km³|m|m²|m³|dm|dm²|dm³|cm|cm²|cm³|mm|mm²|mm³|ha|µm|nm|yd|in|ft|kg|g|mg|µg|t|lb|oz|m/s|km/h|"
          "kmh|mph|hPa|Pa|mbar|mb|MB|kb|KB|gb|GB|tb|TB|T|G|M|K|%")
_ICONS = r"\p{So}"
_HYPHENS = "-|–|—|--|---|——|~"
_PREFIXES = (["§", "%", "=", "—", "–", r"\+(?![0-9])"] + _PUNCT + _ELLIPSES + _QUOTE_LIST
             + [r"\$", "£", "€", "¥", "฿", r"US\$", r"C\$", r"A\$", "[₠-₿]", "﷼", _ICONS])
_SUFFIXES = (_PUNCT + _ELLIPSES + _QUOTE_LIST + [_ICONS, "'s", "'S", "’s", "’S", "—", "–", r"(?<=[0-9])\+",
             r"(?<=°[FfCcKk])\.", rf"(?<=[0-9])(?:{_CURRENCY})", rf"(?<=[0-9])(?:{_UNITS})",
             r"(?<=[0-9\p{Ll}%²\-\+…,:;!?¿؟¡()\[\]{}<>_#*&。？！，、；：～·।،۔؛٪" + regex.escape(_QUOTES) + r"])\.",
             r"(?<=\p{Lu}\p{Lu})\."])
_INFIXES = _ELLIPSES + [_ICONS, r"(?<=[0-9])[+\-\*^](?=[0-9-])",
                        r"(?<=[\p{Ll}" + regex.escape(_QUOTES) + r"])\.(?=[\p{Lu}" + regex.escape(_QUOTES) + "])",
                        r"(?<=\p{L}),(?=\p{L})", rf"(?<=[\p{{L}}0-9])(?:{_HYPHENS})(?=\p{{L}})",
                        r"(?<=[\p{L}0-9])[:<>=/](?=\p{L})"]
# As spaCy compiles them: the first listed prefix that matches wins; the leftmost suffix match wins.
_PREFIX_RE = regex.compile("|".join("^" + p for p in _PREFIXES))
_SUFFIX_RE = regex.compile("|".join(p + "$" for p in _SUFFIXES))
_INFIX_RE = regex.compile("|".join(_INFIXES))
_URL_RE = regex.compile(URL_PATTERN)


def _special(s: str) -> tuple[str, ...] | None:
    if s in SPECIAL_CASES:
        return SPECIAL_CASES[s]
    return (s,) if s in KEEP_WHOLE else None


def tokenize_chunk(chunk: str) -> list[str]:
    """One whitespace-free chunk -> its tokens, as spaCy's `Tokenizer.__call__` does it."""
    special = _special(chunk)
    if special is not None:
        return list(special)
    if chunk.isalpha():  # most chunks: no affix or infix rule can apply to letters only
        return [chunk]
    return _merge_specials(_affixes(chunk, True))


def _maybe_prefix(s: str) -> bool:
    # Only "US$", "C$", "A$" of the prefixes start with a letter or digit: skip the regex otherwise.
    return not s[0].isalnum() or s.startswith(("US$", "C$", "A$"))


def _maybe_suffix(s: str) -> bool:
    # Suffixes ending in a letter or digit: "'s"-like, and units after a digit ("10km").
    c = s[-1]
    if not c.isalnum():
        return True
    return (c in "sS" and len(s) > 1 and s[-2] in "'’") or any(ch.isdigit() for ch in s)


def _affixes(chunk: str, with_specials: bool) -> list[str]:
    """spaCy's `_split_affixes` + `_attach_tokens`."""
    special_of = _special if with_specials else _no_special
    prefixes: list[str] = []
    suffixes: list[str] = []
    s = chunk
    last = -1
    while s and len(s) != last:
        if special_of(s) is not None:
            break
        last = len(s)
        m = _PREFIX_RE.search(s) if _maybe_prefix(s) else None
        pre = m.end() if m else 0
        if pre and special_of(s[pre:]) is not None:
            prefixes.append(s[:pre])
            s = s[pre:]
            break
        m = _SUFFIX_RE.search(s[pre:]) if len(s) > pre and _maybe_suffix(s) else None
        suf = (m.end() - m.start()) if m else 0
        if suf and special_of(s[:-suf]) is not None:
            suffixes.append(s[-suf:])
            s = s[:-suf]
            break
        if pre and suf and pre + suf <= len(s):
            prefixes.append(s[:pre])
            suffixes.append(s[-suf:])
            s = s[pre:-suf]
        elif pre:
            prefixes.append(s[:pre])
            s = s[pre:]
        elif suf:
            suffixes.append(s[-suf:])
            s = s[:-suf]
    out = prefixes
    if s:
        special = special_of(s)
        if special is not None:
            out.extend(special)
        else:
            out.extend(_infixes(s))
    out.extend(reversed(suffixes))
    return out


def _infixes(s: str) -> list[str]:
    if s.isalnum():
        return [s]
    matches = [m for m in _INFIX_RE.finditer(s) if m.start() != 0]  # spaCy skips an infix at the start
    if not matches or _URL_RE.match(s):  # a URL stays whole (spaCy checks it before infixes)
        return [s]
    out, start = [], 0
    for m in matches:
        if m.start() > start:
            out.append(s[start:m.start()])
        if m.end() > m.start():
            out.append(s[m.start():m.end()])
        start = m.end()
    if start < len(s):
        out.append(s[start:])
    return out


def _no_special(s: str) -> None:
    return None


def _affix_specials() -> tuple[dict[tuple[str, ...], tuple[str, ...]], int]:
    """Special cases that affix splitting cuts into several tokens ("):", "Dr." after a prefix):
    spaCy's `_apply_special_cases` finds them again in the token sequence and restores them."""
    table = {}
    for key in (*SPECIAL_CASES, *KEEP_WHOLE):
        base = tuple(_affixes(key, False))
        if len(base) > 1:
            table[base] = _special(key)
    return table, max((len(k) for k in table), default=0)


def _merge_specials(toks: list[str]) -> list[str]:
    if len(toks) < 2:
        return toks
    out: list[str] = []
    i = 0
    while i < len(toks):
        for n in range(min(_AFFIX_SPECIALS_MAX, len(toks) - i), 1, -1):
            hit = _AFFIX_SPECIALS.get(tuple(toks[i:i + n]))
            if hit is not None:
                out.extend(hit)
                i += n
                break
        else:
            out.append(toks[i])
            i += 1
    return out


_AFFIX_SPECIALS, _AFFIX_SPECIALS_MAX = _affix_specials()
_SYMBOLS = frozenset(PUNCTUATION_CHARS)


class Vocabulary:
    """Token strings seen so far -> ids, with the per-token facts the rules need as arrays, and the
    chunk -> token ids cache. Kept per worker across batches (it only grows by new distinct chunks);
    `max_chunks` bounds it (~200 bytes a chunk: ~100 MB at the default)."""

    def __init__(self, stop_words: tuple[str, ...], max_chunks: int = 500_000):
        self.stop_words = stop_words
        self.max_chunks = max_chunks
        self._reset()

    def _reset(self) -> None:
        self.ids: dict[str, int] = {}
        self.length: list[int] = []
        self.symbol: list[bool] = []  # every character is punctuation (datatrove's PUNCTUATION_SET)
        self.alpha: list[bool] = []  # some character is alphabetic (str.isalpha)
        self.stop: list[int] = []  # index in stop_words, or -1
        self.punct: list[bool] = []  # every character is Unicode punctuation (spaCy's `is_punct`)
        self.sent_end: list[bool] = []  # ends a sentence (spaCy's sentencizer punctuation)
        self.chunks: dict[str, tuple[int, ...]] = {}
        self._arrays: tuple[np.ndarray, ...] | None = None

    def _token_id(self, tok: str) -> int:
        i = self.ids.get(tok)
        if i is None:
            i = self.ids[tok] = len(self.length)
            self.length.append(len(tok))
            self.symbol.append(all(c in _SYMBOLS for c in tok))
            self.alpha.append(any(c.isalpha() for c in tok))
            self.stop.append(self.stop_words.index(tok) if tok in self.stop_words else -1)
            self.punct.append(all(unicodedata.category(c).startswith("P") for c in tok))
            self.sent_end.append(tok in SENTENCE_PUNCT)
            self._arrays = None
        return i

    def chunk_ids(self, chunk: str) -> tuple[int, ...]:
        got = self.chunks.get(chunk)
        if got is None:
            toks = [t for t in (x.strip() for x in tokenize_chunk(chunk)) if t]
            got = self.chunks[chunk] = tuple(self._token_id(t) for t in toks)
        return got

    def arrays(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            self._arrays = (np.asarray(self.length, np.int64), np.asarray(self.symbol, bool),
                            np.asarray(self.alpha, bool), np.asarray(self.stop, np.int64),
                            np.asarray(self.punct, bool), np.asarray(self.sent_end, bool))
        return self._arrays

    def maybe_trim(self) -> None:
        if len(self.chunks) > self.max_chunks:
            self._reset()


@dataclass
class Words:
    """All tokens of a batch, flat: token `i` belongs to row `doc[i]`; rows are contiguous and in order."""

    ids: np.ndarray  # vocabulary id per token (equal strings, equal ids)
    doc: np.ndarray
    length: np.ndarray  # characters per token
    symbol: np.ndarray
    alpha: np.ndarray
    stop: np.ndarray
    punct: np.ndarray
    sent_end: np.ndarray
    n_rows: int

    def sentences(self) -> np.ndarray:
        """Sentences per row as spaCy's sentencizer splits them: a new one starts at a token that is not
        punctuation when the last token before it that is not plain punctuation ends a sentence."""
        marks = np.flatnonzero(~self.punct | self.sent_end)  # tokens that change the sentencizer's state
        word = ~self.punct[marks] & ~self.sent_end[marks]
        starts = word[1:] & self.sent_end[marks[:-1]] & (self.doc[marks[1:]] == self.doc[marks[:-1]])
        has_tokens = np.bincount(self.doc, minlength=self.n_rows) > 0
        return has_tokens + np.bincount(self.doc[marks[1:]][starts], minlength=self.n_rows)

    def per_row(self, mask: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
        """Count (or sum `weights`) of the tokens in `mask`, per row."""
        doc = self.doc if mask is None else self.doc[mask]
        w = None if weights is None else (weights if mask is None else weights[mask])
        return np.bincount(doc, weights=w, minlength=self.n_rows)


def words_of(texts: pa.Array, vocab: Vocabulary) -> Words:
    """Tokenise every text of `texts` (nulls are empty)."""
    n = len(texts)
    texts = pc.fill_null(texts, "")
    chunks = pc.utf8_split_whitespace(texts)
    flat = pc.list_flatten(chunks)
    parent = pc.list_parent_indices(chunks).to_numpy()
    vocab.maybe_trim()
    if len(flat) == 0:
        empty, no = np.zeros(0, np.int64), np.zeros(0, bool)
        return Words(empty, empty, empty, no, no, empty, no, no, n)
    enc = pc.dictionary_encode(flat)
    per_chunk = [vocab.chunk_ids(c) for c in enc.dictionary.to_pylist()]
    lens = np.fromiter((len(a) for a in per_chunk), np.int64, len(per_chunk))
    flat_ids = np.fromiter(itertools.chain.from_iterable(per_chunk), np.int64, int(lens.sum()))
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    which = enc.indices.to_numpy()
    n_tok = lens[which]
    total = int(n_tok.sum())
    # Ragged gather: token j of chunk occurrence k is flat_ids[offsets[which[k]] + j].
    starts = np.repeat(offsets[which] - (np.cumsum(n_tok) - n_tok), n_tok)
    ids = flat_ids[starts + np.arange(total)]
    doc = np.repeat(parent, n_tok)
    return Words(ids, doc, *(a[ids] for a in vocab.arrays()), n)
