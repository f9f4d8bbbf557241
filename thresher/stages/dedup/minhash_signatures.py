"""MinHash signatures and LSH band hashes for a batch of shingled texts, vectorised in NumPy.

Permutation k maps a shingle hash h to (a_k * h + b_k) mod p, p = 2**61 - 1, with the product
wrapping mod 2**64 first — datasketch's and datatrove's formula, and their parameters: a_k and
b_k are drawn exactly as datatrove draws them (`np.random.RandomState(seed)`, a in [1, p),
then b in [0, p)), so one seed gives both tools the same permutations. A text's signature is
the minimum over its shingles, per permutation.

Hand-written rather than taken from datasketch, whose `MinHash.update_batch` works one text at
a time (a Python call and a (shingles x num_perm) matrix per text): here one pass per
permutation covers every shingle of a chunk of texts, with `np.minimum.reduceat` taking each
text's minimum, and the mod p is a Mersenne fold (`(x & p) + (x >> 61)`) instead of a
division. The fold leaves values in [0, p + 7]: congruent to the `%` result and equal to it
unless the wrapped product lands within 8 of a multiple of p (odds ~2**-58 per value); either
way each permutation stays one fixed function of h, which is all MinHash needs.

Cost: ~3.5 ns per shingle per permutation on one core; memory ~ 16 bytes per shingle of a chunk
(at most `CHUNK_SHINGLES`) plus 8 * num_perm bytes per text.
"""

from __future__ import annotations

import numpy as np

from thresher.text.hashing import U64, extend

MERSENNE = U64((1 << 61) - 1)
EMPTY = np.iinfo(np.uint64).max  # the signature value of a text without shingles
CHUNK_SHINGLES = 1 << 20  # shingles permuted at once (bounds the scratch arrays)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): `num_perm` permutation parameters each, uint64, as datatrove draws them."""
    gen = np.random.RandomState(seed)
    a = gen.randint(1, MERSENNE, dtype=np.uint64, size=num_perm)
    b = gen.randint(0, MERSENNE, dtype=np.uint64, size=num_perm)
    return a, b


def _chunk_minima(h: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signatures (len(starts) x num_perm) of texts whose shingles `h` begin at `starts`."""
    out = np.empty((len(a), len(starts)), U64)
    x = np.empty(len(h), U64)
    hi = np.empty(len(h), U64)
    with np.errstate(over="ignore"):
        for k in range(len(a)):
            np.multiply(h, a[k], out=x)
            x += b[k]
            np.right_shift(x, U64(61), out=hi)
            x &= MERSENNE
            x += hi
            out[k] = np.minimum.reduceat(x, starts)
    return out.T


def signatures(hashes: np.ndarray, doc: np.ndarray, n_texts: int, a: np.ndarray, b: np.ndarray,
               chunk_shingles: int = CHUNK_SHINGLES) -> np.ndarray:
    """MinHash signatures (n_texts x num_perm, uint64) from shingle hashes grouped by text
    (`doc` ascending). A text without shingles gets `EMPTY` everywhere."""
    sig = np.full((n_texts, len(a)), EMPTY, U64)
    present = np.flatnonzero(np.bincount(doc, minlength=n_texts))
    if len(present) == 0:
        return sig
    starts = np.searchsorted(doc, present)
    bounds = np.append(starts, len(hashes))
    lo = 0
    while lo < len(present):
        # Whole texts per chunk, at least one, about `chunk_shingles` shingles.
        hi = max(int(np.searchsorted(bounds, bounds[lo] + chunk_shingles, side="right")) - 1, lo + 1)
        hi = min(hi, len(present))
        s0, s1 = bounds[lo], bounds[hi]
        sig[present[lo:hi]] = _chunk_minima(hashes[s0:s1], starts[lo:hi] - s0, a, b)
        lo = hi
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per (text, band) of `rows` signature values (n_texts x bands): texts
    share a band hash when that band of their signatures is equal (collisions ~ n**2 / 2**64)."""
    out = np.empty((len(sig), bands), U64)
    for j in range(bands):
        g = sig[:, j * rows].copy()
        for r in range(1, rows):
            g = extend(g, sig[:, j * rows + r])
        out[:, j] = g
    return out
