"""DSIR's model and selection math (Xie et al., 2023), NumPy only: bucket distributions, KL,
per-bucket log-weight vectors, quotas, per-row scores and randomness, and the bounded top-k
merge that picks the selected rows without ever holding the whole pool's weights.

`importance_resample` wires these into the selector template; nothing here knows Beam
pipelines except `TopCandidates`, the combiner the selection runs as.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa

from thresher.text.hashing import splitmix64, utf8_xxh3

EPS_W, EPS_KL = 1e-8, 1e-10
RAW_SAMPLE_STREAM = 0xD5117A11  # the uniform stream that picks `raw_fit_fraction`'s rows


# ---------------------------------------------------------------------------------------
# Distributions


def probs(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    c = counts.astype(np.float64) + smoothing
    total = c.sum()
    return c / total if total > 0 else c


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p||q) = sum p (log(p + 1e-10) - log(q + 1e-10)), as the DSIR paper reports it."""
    return float(np.sum(p * (np.log(p + EPS_KL) - np.log(q + EPS_KL))))


def log_weight_vector(target_counts: np.ndarray, raw_counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """log(p_target + 1e-8) - log(p_raw + 1e-8) per bucket: a row's log w is counts . this."""
    return np.log(probs(target_counts, smoothing) + EPS_W) - np.log(probs(raw_counts) + EPS_W)


# ---------------------------------------------------------------------------------------
# The model


@dataclass
class Model:
    """What scoring and the report need, built once from the pool's and targets' counts."""

    log_diff: np.ndarray  # float64 (units, buckets): one log-weight vector per unit
    quotas: list[int]  # rows (or tokens) each unit selects
    bounds: list[int]  # candidates each unit keeps: its quota plus the earlier units'
    raw_counts: np.ndarray  # int64 pool bucket counts (p_raw)
    per_source: dict[str, np.ndarray]  # target name -> its bucket counts
    target_stats: dict[str, np.ndarray]  # target name -> [rows, tokens]


def quotas_of(total: int, unit_counts: list[np.ndarray], proportions: list[float] | None) -> list[int]:
    """Split `total` between units: by `proportions`, else by each unit's n-gram count."""
    props = (np.asarray(proportions, np.float64) if proportions is not None
             else np.array([c.sum() for c in unit_counts], np.float64))
    props = props / props.sum()
    quotas = [int(total * x) for x in props]
    quotas[-1] += total - sum(quotas)  # as the official package: the rest goes to the last
    return quotas


def build_model(raw_counts: np.ndarray, targets: dict[str, dict[str, np.ndarray]], names: list[str],
                separate: bool, smoothing: float, total: int, proportions: list[float] | None) -> Model:
    """`targets`: target name -> {"counts": bucket counts, "stats": [rows, tokens]}; `names`
    the targets in recipe order; one unit per target when `separate`, else one pooled unit."""
    missing = [n for n in names if n not in targets]
    if missing:
        raise ValueError(f"importance_resample: target source(s) {missing} have no rows")
    per_source = {n: targets[n]["counts"] for n in names}
    unit_counts = [per_source[n] for n in names] if separate else [np.sum([per_source[n] for n in names], axis=0)]
    log_diff = np.stack([log_weight_vector(c, raw_counts, smoothing) for c in unit_counts])
    quotas = quotas_of(total, unit_counts, proportions) if separate else [total]
    # Unit i can lose at most the earlier units' quotas to them, so its candidates need only
    # reach quota_i + sum(earlier quotas): the bound keeps the combiner small.
    bounds = [int(b) for b in np.cumsum(quotas)]
    return Model(log_diff=log_diff, quotas=quotas, bounds=bounds, raw_counts=raw_counts, per_source=per_source,
                 target_stats={k: v["stats"] for k, v in targets.items()})


def scores(row: np.ndarray, buckets: np.ndarray, counts: np.ndarray | None, n_tokens: np.ndarray,
           log_diff: np.ndarray, length_normalize: bool) -> np.ndarray:
    """log w per (unit, row) from a batch's (row, bucket[, count]) occurrences. Sums run over
    a row's occurrences in their stored order, so a row's score (to the last bit) does not
    depend on which batch it is in."""
    n_rows = len(n_tokens)
    out = np.empty((len(log_diff), n_rows), np.float64)
    for u, ld in enumerate(log_diff):
        w = np.take(ld, buckets)  # np.take: ~1.5x fancy indexing's speed on this gather
        if counts is not None:
            w *= counts
        out[u] = np.bincount(row, weights=w, minlength=n_rows)
        if length_normalize:
            out[u] /= np.maximum(n_tokens, 1)
    return out


# ---------------------------------------------------------------------------------------
# Stable per-row randomness


def row_hashes(ids: list | pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """xxh3-64 of each row id's UTF-8 bytes, seeded: the same id gives the same value on any
    worker."""
    return utf8_xxh3(ids, seed)


def uniform(h: np.ndarray, stream: int) -> np.ndarray:
    """Independent uniforms in (0, 1), one stream per use (raw sample, unit i's noise)."""
    x = splitmix64(h ^ splitmix64(np.full(1, stream, np.uint64)))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def gumbel(h: np.ndarray, unit: int) -> np.ndarray:
    """Gumbel(0, 1) noise for unit `unit` (added to log w: Gumbel top-k samples by weight)."""
    return -np.log(-np.log(uniform(h, unit + 1)))


# ---------------------------------------------------------------------------------------
# Bounded top-k


def ranked(keys: np.ndarray, row_keys: np.ndarray) -> np.ndarray:
    """Order by key descending, then `__row_key` ascending: a total order, so any runner's
    merge order gives the same result."""
    return np.lexsort((row_keys, -keys))


def truncate(keys: np.ndarray, row_keys: np.ndarray, weights: np.ndarray, bound: int):
    """The best rows whose weights (1 per row, or tokens) add up to at most `bound`, plus the
    first row that goes over it (in `ranked` order for token weights; in no order for unit
    weights, whose merges only need the set)."""
    if (weights == 1).all() and not np.isnan(keys).any():
        return _best(keys, row_keys, weights, bound + 1)
    order = ranked(keys, row_keys)
    keys, row_keys, weights = keys[order], row_keys[order], weights[order]
    # A row whose rows ahead of it already weigh more than the bound here do so in the whole
    # pool too, so it can never be chosen. The first row that goes over is kept: it still uses
    # up budget in the final pass, where a row of another batch ranked behind it (and light
    # enough to fit without it) must not be chosen — else the selection would depend on how
    # rows were batched.
    keep = (np.cumsum(weights) - weights) <= bound
    return keys[keep], row_keys[keep], weights[keep]


def _best(keys: np.ndarray, row_keys: np.ndarray, weights: np.ndarray, m: int):
    """The first `m` rows in `ranked` order, unordered: a partition (O(n)) finds the m-th key,
    and only the rows tied with it are sorted (by row key), instead of sorting every row."""
    if len(keys) <= m:
        return keys, row_keys, weights
    kth = np.partition(keys, len(keys) - m)[len(keys) - m]
    keep = keys > kth
    tied = np.flatnonzero(keys == kth)
    keep[tied[np.argsort(row_keys[tied], kind="stable")[:m - int(keep.sum())]]] = True
    return keys[keep], row_keys[keep], weights[keep]


# With one row per unit of weight (`k`), a merge lets a unit's candidates grow to this many
# times its bound before it sorts and truncates them: then truncating early or late selects
# the same rows (truncate(A + B) == truncate(truncate(A) + B): a row of A behind `bound` rows
# of A is behind them in A + B too), so a merge sorts once every few batches, not per batch.
# Token weights truncate at every merge, as they always have: there a row dropped early no
# longer uses up the budget of the rows behind it, so the timing of truncation matters.
SLACK = 2


def bounded(keys: np.ndarray, row_keys: np.ndarray, weights: np.ndarray, bound: int, slack: int = 1):
    """`truncate`, but only when the rows (or their weights) exceed `slack` times `bound`;
    `slack` > 1 applies to unit weights only."""
    if slack > 1 and not (weights == 1).all():
        slack = 1
    if len(keys) <= slack * bound and int(weights.sum()) <= slack * bound:
        return keys, row_keys, weights  # what truncate would keep (all of it, at slack 1)
    return truncate(keys, row_keys, weights, bound)


@dataclass
class Candidates:
    """Per unit, the best rows seen so far: (keys, row keys, weights), holding its best rows
    within its bound (and at most `SLACK` times the bound; `extract_output` truncates)."""

    quotas: list[int]
    bounds: list[int]
    units: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class Selection:
    row_keys: np.ndarray  # uint64, sorted: the selected rows
    unit: np.ndarray  # int32: the unit each was selected for
    taken: list[tuple[int, int]]  # per unit: (rows, weight) taken


class TopCandidates(beam.CombineFn):
    """Bounded top-k merge (Beam's `Top`, over arrays instead of one element per row), then
    the units resolved in order, without replacement."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accs):
        accs = [a for a in accs if a is not None]
        if not accs:
            return None
        units = []
        for u, bound in enumerate(accs[0].bounds):
            parts = [a.units[u] for a in accs]
            units.append(bounded(*(np.concatenate([x[i] for x in parts]) for i in range(3)), bound, SLACK))
        return Candidates(accs[0].quotas, accs[0].bounds, units)

    def extract_output(self, acc) -> Selection:
        """-> sorted selected row keys, the unit each was selected for, per-unit (rows, weight)."""
        if acc is None:
            return Selection(np.zeros(0, np.uint64), np.zeros(0, np.int32), [])
        chosen_keys, chosen_unit, taken = [], [], []
        chosen = np.zeros(0, np.uint64)
        for u, (quota, (keys, rk, w)) in enumerate(zip(acc.quotas, acc.units, strict=True)):
            keys, rk, w = truncate(keys, rk, w, acc.bounds[u])
            order = ranked(keys, rk)
            rk, w = rk[order], w[order]
            free = ~np.isin(rk, chosen)
            rk, w = rk[free], w[free]
            take = np.cumsum(w) <= quota
            chosen_keys.append(rk[take])
            chosen_unit.append(np.full(int(take.sum()), u, np.int32))
            taken.append((int(take.sum()), int(w[take].sum())))
            chosen = np.concatenate([chosen, rk[take]])
        keys = np.concatenate(chosen_keys)
        unit = np.concatenate(chosen_unit)
        order = np.argsort(keys)
        return Selection(keys[order], unit[order], taken)
