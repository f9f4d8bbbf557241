"""LSH banding for MinHash: choosing bands x rows, candidate pairs from band buckets, and
connected components over the pairs — all in NumPy over arrays of row keys.

Memory: `bucket_pairs` sees one shuffle group (the band hashes that landed in it), and the
pairs it emits are at most min(k - 1 + k * (k - 1) / 2, k * cap) per bucket of k rows; the
components need only the pair list (proportional to the duplicates, not to the corpus).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from thresher.text.shingles import jaccard

_GRID = 1001  # points of the integration grid in `optimal_bands_rows`
# NumPy 2 renamed trapz; the project still allows NumPy 1.26.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def candidate_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two texts of Jaccard similarity s share at least one band): 1 - (1 - s**rows)**bands."""
    return 1.0 - (1.0 - np.asarray(s, float) ** rows) ** bands


@lru_cache(maxsize=64)
def optimal_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                       false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, minimising the weighted area of false positives
    (candidate probability below `threshold`) and false negatives (its complement above it).

    The criterion of datasketch's `MinHashLSH` (`_optimal_param`, which integrates each
    (bands, rows) with scipy's quad in a Python double loop); here all of them are scored at
    once on one trapezoid grid (same choices on the thresholds we checked). Ties go to fewer
    bands, then fewer rows."""
    b = np.concatenate([np.full(num_perm // k, k) for k in range(1, num_perm + 1)])
    r = np.concatenate([np.arange(1, num_perm // k + 1) for k in range(1, num_perm + 1)])
    areas = []
    for s in (np.linspace(0.0, threshold, _GRID), np.linspace(threshold, 1.0, _GRID)):
        # log(1 - s**r) once per r; then (1 - s**r)**b = exp(b * that) for every (b, r) pair.
        with np.errstate(divide="ignore"):
            log_miss = np.log1p(-(s[None, :] ** np.arange(1, num_perm + 1)[:, None]))
        p = 1.0 - np.exp(b[:, None] * log_miss[r - 1])
        areas.append(_trapezoid(p, s, axis=1))
    fp, fn = areas[0], (1.0 - threshold) - areas[1]
    err = false_positive_weight * fp + false_negative_weight * fn
    i = int(np.argmin(np.round(err, 12)))  # first minimum: fewest bands, then fewest rows
    return int(b[i]), int(r[i])


def bucket_pairs(band: np.ndarray, band_hash: np.ndarray, keys: np.ndarray, all_pairs: bool, cap: int):
    """Candidate pairs (a, b), a < b row keys, from rows sharing a (band, band hash) bucket.

    Every bucket yields its first row (lowest key) paired with each other row, which already
    connects the bucket. With `all_pairs` (needed when pairs are verified, since A~B and B~C
    do not make A~C), buckets of at most `cap` rows also yield every other pair; bigger ones
    keep to the star, so no bucket costs more than k * cap pairs.
    Returns (a, b, stats) with stats about the buckets of two rows or more."""
    order = np.lexsort((keys, band_hash, band))
    band, band_hash, keys = band[order], band_hash[order], keys[order]
    n = len(keys)
    new = np.ones(n, bool)
    new[1:] = (band[1:] != band[:-1]) | (band_hash[1:] != band_hash[:-1])
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, n))
    run = np.cumsum(new) - 1
    follower = ~new
    a = [keys[start[run[follower]]]]
    b = [keys[follower]]
    if all_pairs:
        for k in np.unique(size[(size > 2) & (size <= cap)]).tolist():
            # All buckets of k rows at once: their rows as a (buckets x k) matrix, pairs i < j
            # past the first row (its pairs are the star's).
            rows = start[size == k][:, None] + np.arange(k)
            i, j = np.triu_indices(k, 1)
            past_first = i > 0
            a.append(keys[rows[:, i[past_first]]].ravel())
            b.append(keys[rows[:, j[past_first]]].ravel())
    multi = size[size > 1]
    stats = {"buckets_with_candidates": int(len(multi)), "rows_in_candidate_buckets": int(multi.sum()),
             "largest_bucket": int(multi.max(initial=0)),
             "buckets_over_cap": int((multi > cap).sum()) if all_pairs else 0}
    return np.concatenate(a), np.concatenate(b), stats


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs with a < b, each once, sorted."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    pairs = np.unique(np.stack([lo[keep], hi[keep]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph with edges (a[i], b[i]) over row keys.

    Returns (nodes: the keys that appear, ascending; root: each node's component as the
    component's lowest key). scipy's connected_components does the union-find work."""
    nodes = np.unique(np.concatenate([a, b]))
    if len(nodes) == 0:
        return nodes, nodes.copy()
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(ia), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    # Nodes are ascending, so a label's first node is its lowest key.
    _, first = np.unique(label, return_index=True)
    return nodes, nodes[first[label]]


def verified(a: np.ndarray, b: np.ndarray, sets: dict[int, np.ndarray], threshold: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs whose shingle sets (row key -> sorted distinct hashes) have Jaccard >= threshold."""
    ok = np.fromiter((jaccard(sets[int(x)], sets[int(y)]) >= threshold for x, y in zip(a, b, strict=True)),
                     bool, len(a))
    return a[ok], b[ok]
