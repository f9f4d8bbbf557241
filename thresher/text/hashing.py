"""The one token and n-gram hasher: every n-gram hash in thresher (`ngram_features`' buckets,
DSIR's features, decontamination's index) is made here, the same way on any machine.

* A token's hash is a 64-bit polynomial hash of its code points, sum_j cp[j] * P**j
  (mod 2**64), plus its length times the golden-ratio constant, scrambled with splitmix64.
  Over a batch it is computed for every token at once from one prefix sum over the batch's
  code points, made position-independent with P's inverse powers (P is odd, so invertible
  mod 2**64): O(characters) NumPy work, no per-token Python.
* An n-gram's hash folds its tokens' hashes left to right: g_1 = h(t_1),
  g_m = splitmix64(g_{m-1} * golden + h(t_m)). Every order of a batch is one vectorised pass
  over the previous order, so unigrams..n-grams cost n passes.

Whole strings (texts for exact dedup, row ids for dedup winners, DSIR's noise and splits) are
hashed with xxh3-64 of their UTF-8 bytes instead: `utf8_xxh3`.

These values are stored: `ngram_features` writes `hash % num_buckets` into the shards, so
changing anything here changes output bytes (bump `HASH_VERSION`, which the columns carry).
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.text.tokenize import Tokens

HASH_VERSION = "thresher-ngram-v1"

U64 = np.uint64
GOLDEN = U64(0x9E3779B97F4A7C15)
_POLY = U64(0x100000001B3)  # odd, so it has an inverse mod 2**64
_POLY_INV = U64(pow(0x100000001B3, -1, 1 << 64))
_MIX1, _MIX2 = U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB)

# Powers of P and of its inverse, grown on demand (per process).
_POW = np.ones(1, U64)
_POW_INV = np.ones(1, U64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _POW, _POW_INV
    if len(_POW) < n:
        size = max(n, 2 * len(_POW))
        pw = np.full(size, _POLY, U64)
        pw[0] = 1
        ipw = np.full(size, _POLY_INV, U64)
        ipw[0] = 1
        with np.errstate(over="ignore"):
            _POW, _POW_INV = np.cumprod(pw), np.cumprod(ipw)
    return _POW[:n], _POW_INV[:n]


def _scramble(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """splitmix64's mixing of `z` (already offset by the golden constant), in place; `tmp`
    is scratch space of the same length."""
    with np.errstate(over="ignore"):
        np.right_shift(z, U64(30), out=tmp)
        z ^= tmp
        z *= _MIX1
        np.right_shift(z, U64(27), out=tmp)
        z ^= tmp
        z *= _MIX2
        np.right_shift(z, U64(31), out=tmp)
        z ^= tmp
    return z


def splitmix64(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A fast, well-mixed stable hash of uint64 values (wrapping arithmetic on purpose).
    `out=x` scrambles in place."""
    with np.errstate(over="ignore"):
        z = np.add(x, GOLDEN, out=out)
    return _scramble(z, np.empty_like(z))


def span_hashes(cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The token hash of each span `cp[starts[i]:ends[i]]` of a code-point array (uint64)."""
    if len(starts) == 0:
        return np.zeros(0, U64)
    pw, ipw = _powers(len(cp) + 1)
    prefix = np.empty(len(cp) + 1, U64)
    prefix[0] = 0
    with np.errstate(over="ignore"):
        # In place: the products and their running sum in one buffer, no temporaries.
        np.multiply(cp, pw[:len(cp)], out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        poly = (prefix[ends] - prefix[starts]) * ipw[starts]
        poly += (ends - starts).astype(U64) * GOLDEN
    return splitmix64(poly, out=poly)


def token_hashes(tokens: Tokens) -> np.ndarray:
    """The hash of each token of a tokenised batch (uint64, in token order)."""
    return span_hashes(tokens.cp, tokens.starts, tokens.ends)


def string_hashes(strings: list[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each string hashed whole, as a token of exactly those characters (no lowercasing)."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if isinstance(strings, pa.Array) and strings.type in (pa.string(), pa.large_string()):
        # Straight from Arrow's UTF-8 buffer: one decode for the whole array instead of a
        # Python string per value (decontamination hashes a batch's vocabulary this way).
        if len(strings) == 0:
            return np.zeros(0, U64)
        width = np.int32 if strings.type == pa.string() else np.int64
        offsets = np.frombuffer(strings.buffers()[1], width, len(strings) + 1, strings.offset * width().itemsize)
        data = strings.buffers()[2]
        raw = data.to_pybytes()[offsets[0]:offsets[-1]] if data is not None else b""
        cp = np.frombuffer(raw.decode("utf-8").encode("utf-32-le"), np.uint32)
        lengths = pc.fill_null(pc.utf8_length(strings), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        strings = strings.to_pylist() if isinstance(strings, pa.Array) else list(strings)
        if not strings:
            return np.zeros(0, U64)
        lengths = np.fromiter(map(len, strings), np.int64, len(strings))
        cp = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), np.uint32)
    ends = np.cumsum(lengths)
    return span_hashes(cp, ends - lengths, ends)


def extend(grams: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """m-gram hashes and the token hash after each -> the (m+1)-gram hashes (a new array)."""
    with np.errstate(over="ignore"):
        out = grams * GOLDEN
        out += tokens
    return splitmix64(out, out=out)


def window_hashes(tokens: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """The hash of the k-gram `tokens[s:s+k]` for each s in `starts` (each needs s + k <= len)."""
    g = tokens[starts]
    for j in range(1, k):
        g = extend(g, tokens[starts + j])
    return g


def orders(tokens: np.ndarray, up_to: int):
    """Yield (m, hashes of the m-grams at every start) for m = 1..`up_to`: `g[i]` covers
    `tokens[i:i+m]`, ignoring text boundaries (callers keep the starts they want).

    One vectorised pass per order, in place over the previous order's hashes: each yielded
    array (but the first, `tokens` itself) is overwritten by the next order, so copy what
    you keep (fancy indexing copies). In place because decontamination folds 13-grams over
    every word of a batch: fresh arrays per step made that ~1.5x slower."""
    yield 1, tokens
    n = len(tokens)
    g = np.empty(n, U64)
    tmp = np.empty(n, U64)
    with np.errstate(over="ignore"):
        shifted = tokens + GOLDEN  # splitmix64's offset, added once for every order
        for m in range(2, up_to + 1):
            size = max(n - m + 1, 0)
            gv = g[:size]
            # g_m[i] = splitmix64(g_{m-1}[i] * golden + t[i+m-1]), as `extend`.
            np.multiply(tokens[:size] if m == 2 else gv, GOLDEN, out=gv)
            gv += shifted[m - 1:m - 1 + size]
            yield m, _scramble(gv, tmp[:size])


def ngram_orders(tokens: np.ndarray, doc: np.ndarray, ngrams: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(hashes, text of each)] for n = 1..`ngrams`: every n-gram lying inside one text, in
    text order (orders with no n-gram left are omitted)."""
    out = []
    for m, gram in orders(tokens, ngrams):
        if m > 1:
            # gram[i] covers tokens i..i+m-1; it counts only when they are in one text.
            same = doc[: len(gram)] == doc[m - 1:]
            out.append((gram[same], doc[m - 1:][same]))
        else:
            out.append((gram, doc))
        if len(gram) < 2:  # no longer n-gram left
            break
    return out


def utf8_xxh3(values: list | pa.Array | pa.ChunkedArray, seed: int = 0) -> np.ndarray:
    """xxh3-64 of each value's UTF-8 bytes (`seed` taken mod 2**64): the same string gives the
    same value on any worker. An Arrow string column without nulls is hashed from its own
    bytes (a zero-copy cast to binary: no str per row); anything else through `str(v)`.
    `map` with a positional seed is the cheapest per-row call into xxhash (~3x a generator)."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and not values.null_count and (
            pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        data = values.cast(pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary()).to_pylist()
    else:
        data = [str(v).encode("utf-8", "surrogatepass")
                for v in (values.to_pylist() if isinstance(values, pa.Array) else values)]
    return np.fromiter(map(xxhash.xxh3_64_intdigest, data, itertools.repeat(s, len(data))), np.uint64, len(data))
