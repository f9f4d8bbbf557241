"""`importance_resample`: keep the pool rows that look like a target domain (DSIR).

Data Selection with Importance Resampling (Xie et al., 2023), as the official
`data-selection` package does it, on hashed n-gram features (see `ngram_features`):

* p_target: bucket counts over all target rows (+ `smoothing` per bucket), normalised;
  p_raw: bucket counts over the pool (or a `raw_fit_fraction` sample of it), normalised.
* log w(x) = sum_b counts_b(x) * (log(p_target[b] + 1e-8) - log(p_raw[b] + 1e-8)),
  divided by the row's token count when `length_normalize` is on.
* k rows (or `token_budget` tokens) are drawn without replacement by Gumbel top-k on log w
  (or plain top-k with `top_k: true`), among rows with at least `min_tokens` tokens.
* KL reduction = KL(target||raw) - KL(target||selected), KL(p||q) = sum p (log(p+1e-10) -
  log(q+1e-10)), reported per target.

In:  canonical batches; reuses `ngram_buckets`/`ngram_counts` when an `ngram_features` stage
     made them with the same `ngrams`/`num_buckets`, else hashes the text itself.
Out: the selected rows, with the score column `dsir_log_weight` (`dsir_log_weight_<target>`
     per target and `dsir_target` when `separate_targets`). Dropped rows have reason
     `too_short` (under `min_tokens`) or `not_selected`. Report (`reports/<stage>.json`):
     KL(target||raw), KL(target||selected) and the reduction per target, pool/selected row
     and token counts, how many rows `min_tokens` dropped, mean token counts (the weights'
     length bias).
Cost: CPU only. One hashing pass over pool and target (~5-10 µs per 100-token row), one
     scoring pass, one decision pass. Memory: bucket-count vectors (num_buckets x 8 bytes
     per target) and a bounded candidate set (k rows, or the rows within `token_budget`,
     times the number of targets): the weights of the whole pool are never in one process.

Determinism: the Gumbel noise of a row is a stable hash (xxh3) of (seed, target, row id),
not a draw from a global RNG stream, and ties are broken by `__row_key`; the selection is
the same for any runner parallelism and batch size.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import xxhash
from pydantic import Field, model_validator

from thresher.stages.features import ngram_features as nf
from thresher.core.stage import BatchFn, MapBatches, Stage, StageParams
from thresher.core import rows
from thresher.recipe.schema import RecipeError, Source, expand_source_files
from thresher.core.selector import ApplyDecisions, with_decisions

# Internal columns this stage carries between its own steps (never reach the shards).
_B, _C, _NTOK = "__dsir_buckets", "__dsir_counts", "__dsir_n_tokens"
TOO_SHORT, NOT_SELECTED = "too_short", "not_selected"
TARGET_COLUMN = "dsir_target"
_EPS_W, _EPS_KL = 1e-8, 1e-10


class ImportanceResampleParams(StageParams):
    target: list[Source] = Field(
        ..., min_length=1,
        description="Target-domain sources, written like the recipe's `sources` (name, paths, "
        "text_field/text_template ...).",
    )
    k: int | None = Field(None, gt=0, description="Rows to select (give `k` or `token_budget`).")
    token_budget: int | None = Field(
        None, gt=0,
        description="Instead of `k`: select rows in weight order while their `n_tokens` sum "
        "stays within this budget.",
    )
    ngrams: int = Field(2, ge=1, le=5, description="Largest n-gram order (2: unigrams + bigrams).")
    num_buckets: int = Field(10_000, ge=1, le=1 << 24, description="Hash buckets of the features.")
    smoothing: float = Field(
        0.0, ge=0.0, description="Laplace smoothing: added to every target bucket count (official: 0)."
    )
    min_tokens: int = Field(
        5, ge=0,
        description="Rows with fewer tokens are never selected (reason `too_short`). The official "
        "package's default of 100 drops most paragraph-sized rows silently; here the report "
        "says how many rows it dropped.",
    )
    top_k: bool = Field(False, description="Deterministic top-k by weight instead of Gumbel sampling.")
    separate_targets: bool = Field(
        False,
        description="Give each target its own weights and quota (selected one after another, "
        "without replacement), instead of pooling all targets into one distribution.",
    )
    target_proportions: list[float] | None = Field(
        None,
        description="With `separate_targets`: each target's share of `k`/`token_budget` "
        "(default: proportional to each target's n-gram count, as the official package).",
    )
    length_normalize: bool = Field(
        False,
        description="Divide log w by the row's token count. The plain weight grows with length "
        "(positive for target-like rows, negative for others), so it favours long target-like "
        "and short off-target rows; the report's mean token counts show the bias.",
    )
    raw_fit_fraction: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Fit p_raw on this fraction of the pool (a stable hash of the row id "
        "chooses the rows); every row is still scored.",
    )
    score_column: str = Field("dsir_log_weight", description="Name of the log-weight column.")

    @model_validator(mode="after")
    def _check(self) -> "ImportanceResampleParams":
        if (self.k is None) == (self.token_budget is None):
            raise ValueError("give exactly one of `k` and `token_budget`")
        names = [t.name for t in self.target]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique: {names}")
        if self.target_proportions is not None:
            if not self.separate_targets:
                raise ValueError("`target_proportions` needs `separate_targets: true`")
            if len(self.target_proportions) != len(self.target):
                raise ValueError("`target_proportions` needs one number per target")
            if any(p < 0 for p in self.target_proportions) or sum(self.target_proportions) <= 0:
                raise ValueError("`target_proportions` must be >= 0 with a positive sum")
        return self

    @property
    def units(self) -> list[str]:
        """The weightings: one per target when separate, else one for the pooled targets."""
        return [t.name for t in self.target] if self.separate_targets else ["target"]


# ---------------------------------------------------------------------------------------
# Features as (row, bucket, count) occurrences


def _featurize(batch: pa.RecordBatch, p: ImportanceResampleParams) -> pa.RecordBatch:
    """Add the internal occurrence columns, reusing `ngram_features` columns when they match."""
    if nf.columns_match(batch.schema, p.ngrams, p.num_buckets):
        b = batch.column(nf.BUCKETS_COLUMN)
        c = batch.column(nf.COUNTS_COLUMN)
        if nf.N_TOKENS_COLUMN in batch.schema.names:
            ntok = batch.column(nf.N_TOKENS_COLUMN).cast(pa.int32())
        else:
            ntok = pa.array(nf.token_counts(batch.column(rows.TEXT)), pa.int32())
    else:
        indptr, buckets, n_tokens = nf.ngram_rows(batch.column(rows.TEXT), p.ngrams, p.num_buckets)
        offsets = pa.array(indptr.astype(np.int32) if indptr[-1] < 2**31 else indptr)
        list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        b = list_type.from_arrays(offsets, pa.array(buckets, pa.int32()))
        c = None
        ntok = pa.array(n_tokens, pa.int32())
    out = batch.append_column(_B, b).append_column(_NTOK, ntok)
    return out.append_column(_C, c) if c is not None else out


def _occurrences(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if _C in batch.schema.names:
        return nf.sparse_from_columns(batch.column(_B), batch.column(_C))
    b = batch.column(_B)
    offsets = b.offsets.to_numpy()
    row = np.repeat(np.arange(len(b), dtype=np.int64), np.diff(offsets - offsets[0]))
    return row, b.flatten().to_numpy(), None


def _bucket_counts(batch: pa.RecordBatch, num_buckets: int, mask: np.ndarray | None = None) -> np.ndarray:
    row, b, c = _occurrences(batch)
    if mask is not None:
        keep = mask[row]
        b = b[keep]
        c = c[keep] if c is not None else None
    if c is None:
        return np.bincount(b, minlength=num_buckets).astype(np.int64)
    return np.bincount(b, weights=c, minlength=num_buckets).astype(np.int64)


def _drop_internal(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.drop_columns([n for n in (_B, _C, _NTOK) if n in batch.schema.names])


# ---------------------------------------------------------------------------------------
# Stable per-row randomness


def _row_hashes(batch: pa.RecordBatch, seed: int) -> np.ndarray:
    """xxh3-64 of each row id, seeded: the same id gives the same value on any worker."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    ids = batch.column(rows.ID).to_pylist()
    return np.fromiter((xxhash.xxh3_64_intdigest(str(i).encode("utf-8", "surrogatepass"), seed=s) for i in ids),
                       np.uint64, len(ids))


def _uniform(h: np.ndarray, stream: int) -> np.ndarray:
    """Independent uniforms in (0, 1), one stream per use (raw sample, target i's noise)."""
    x = nf.splitmix64(h ^ nf.splitmix64(np.full(1, stream, np.uint64)))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


_RAW_SAMPLE_STREAM = 0xD5117A11


# ---------------------------------------------------------------------------------------
# Pass 1: bucket counts


class _SumArrays(beam.CombineFn):
    """Element-wise sum of tuples of NumPy arrays (bucket counts, small stat vectors)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, item):
        if acc is None:
            return tuple(np.array(x, copy=True) for x in item)
        for a, x in zip(acc, item):
            a += x
        return acc

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = self.add_input(out, a)
        return out

    def extract_output(self, acc):
        return acc


class _RawCounts(beam.DoFn):
    """Pool batch -> (bucket counts, [rows, tokens, too_short rows, eligible tokens])."""

    def __init__(self, p: ImportanceResampleParams, seed: int):
        self.p, self.seed = p, seed

    def process(self, batch: pa.RecordBatch):
        ntok = batch.column(_NTOK).to_numpy()
        mask = None
        if self.p.raw_fit_fraction < 1.0:
            mask = _uniform(_row_hashes(batch, self.seed), _RAW_SAMPLE_STREAM) < self.p.raw_fit_fraction
        counts = _bucket_counts(batch, self.p.num_buckets, mask)
        short = ntok < self.p.min_tokens
        stats = np.array([batch.num_rows, ntok.sum(), short.sum(), ntok[~short].sum(),
                          batch.num_rows if mask is None else mask.sum()], np.int64)
        yield counts, stats


def _target_counts(batch: pa.RecordBatch, p: ImportanceResampleParams):
    """Target batch (one source) -> (source name, (bucket counts, [rows, tokens]))."""
    batch = _featurize(batch, p)
    name = batch.column(rows.SOURCE)[0].as_py()
    ntok = batch.column(_NTOK).to_numpy()
    yield name, (_bucket_counts(batch, p.num_buckets), np.array([batch.num_rows, ntok.sum()], np.int64))


# ---------------------------------------------------------------------------------------
# The model: log-weight vectors, quotas


def _probs(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    c = counts.astype(np.float64) + smoothing
    total = c.sum()
    return c / total if total > 0 else c


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p||q) = sum p (log(p + 1e-10) - log(q + 1e-10)), as the DSIR paper reports it."""
    return float(np.sum(p * (np.log(p + _EPS_KL) - np.log(q + _EPS_KL))))


def log_weight_vector(target_counts: np.ndarray, raw_counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """log(p_target + 1e-8) - log(p_raw + 1e-8) per bucket: a row's log w is counts . this."""
    return np.log(_probs(target_counts, smoothing) + _EPS_W) - np.log(_probs(raw_counts) + _EPS_W)


def _build_model(_, raw, targets: dict, p: ImportanceResampleParams) -> dict[str, Any]:
    B = p.num_buckets
    raw_counts = raw[0] if raw is not None else np.zeros(B, np.int64)
    missing = [t.name for t in p.target if t.name not in targets]
    if missing:
        raise ValueError(f"importance_resample: target source(s) {missing} have no rows")
    per_source = {t.name: targets[t.name][0] for t in p.target}
    unit_counts = ([per_source[t.name] for t in p.target] if p.separate_targets
                   else [np.sum([per_source[t.name] for t in p.target], axis=0)])
    log_diff = np.stack([log_weight_vector(c, raw_counts, p.smoothing) for c in unit_counts])
    total = p.k if p.k is not None else p.token_budget
    if p.separate_targets:
        props = (np.asarray(p.target_proportions, np.float64) if p.target_proportions is not None
                 else np.array([c.sum() for c in unit_counts], np.float64))
        props = props / props.sum()
        quotas = [int(total * x) for x in props]
        quotas[-1] += total - sum(quotas)  # as the official package: the rest goes to the last
    else:
        quotas = [total]
    # Target i can lose at most the earlier targets' quotas to them, so its candidates need
    # only reach quota_i + sum(earlier quotas): the bound keeps the combiner small.
    bounds = list(np.cumsum(quotas))
    return {"log_diff": log_diff, "quotas": quotas, "bounds": [int(b) for b in bounds],
            "raw_counts": raw_counts, "per_source": per_source,
            "target_stats": {k: v[1] for k, v in targets.items()}}


# ---------------------------------------------------------------------------------------
# Pass 2: scores, candidates


def _scores(batch: pa.RecordBatch, model: dict, p: ImportanceResampleParams) -> np.ndarray:
    """log w per (unit, row): sums over the row's occurrences in their stored order, so a row's
    score does not depend on which batch it is in."""
    row, b, c = _occurrences(batch)
    ntok = batch.column(_NTOK).to_numpy()
    out = np.empty((len(model["log_diff"]), batch.num_rows), np.float64)
    for u, ld in enumerate(model["log_diff"]):
        w = ld[b] if c is None else ld[b] * c
        out[u] = np.bincount(row, weights=w, minlength=batch.num_rows)
        if p.length_normalize:
            out[u] /= np.maximum(ntok, 1)
    return out


def _score_column_names(p: ImportanceResampleParams) -> list[str]:
    if not p.separate_targets:
        return [p.score_column]
    return [f"{p.score_column}_{name}" for name in p.units]


class _Score(BatchFn):
    def __init__(self, p: ImportanceResampleParams):
        self.p = p

    def __call__(self, batch: pa.RecordBatch, model) -> pa.RecordBatch:
        scores = _scores(batch, model, self.p)
        out = batch.drop_columns([n for n in (_B, _C) if n in batch.schema.names])
        for name, s in zip(_score_column_names(self.p), scores):
            idx = out.schema.get_field_index(name)
            arr = pa.array(s, pa.float64())
            out = out.set_column(idx, name, arr) if idx >= 0 else out.append_column(name, arr)
        return out


def _ranked(keys: np.ndarray, row_keys: np.ndarray) -> np.ndarray:
    """Order by key descending, then `__row_key` ascending: a total order, so any runner's
    merge order gives the same result."""
    return np.lexsort((row_keys, -keys))


def _truncate(keys, row_keys, weights, bound: int):
    order = _ranked(keys, row_keys)
    keys, row_keys, weights = keys[order], row_keys[order], weights[order]
    # A row whose weight sum with the rows ahead of it is already over the bound here is over
    # it in the whole pool too, so it can never be chosen.
    keep = np.cumsum(weights) <= bound
    return keys[keep], row_keys[keep], weights[keep]


class _Candidates(beam.DoFn):
    """Scored batch -> per unit, the batch's best rows (by Gumbel-noised or plain log w)."""

    def __init__(self, p: ImportanceResampleParams, seed: int):
        self.p, self.seed = p, seed

    def process(self, batch: pa.RecordBatch, model):
        p = self.p
        ntok = batch.column(_NTOK).to_numpy()
        eligible = ntok >= p.min_tokens
        rk = batch.column(rows.ROW_KEY).to_numpy()[eligible]
        weights = np.ones(int(eligible.sum()), np.int64) if p.k is not None else ntok[eligible].astype(np.int64)
        h = _row_hashes(batch, self.seed)[eligible] if not p.top_k else None
        per_unit = []
        for u, col in enumerate(_score_column_names(p)):
            keys = batch.column(col).to_numpy()[eligible]
            if not p.top_k:
                keys = keys - np.log(-np.log(_uniform(h, u + 1)))  # + Gumbel(0, 1)
            per_unit.append(_truncate(keys, rk, weights, model["bounds"][u]))
        yield {"quotas": model["quotas"], "bounds": model["bounds"], "units": per_unit}


class _TopCandidates(beam.CombineFn):
    """Bounded top-k merge (Beam's `Top`, over arrays instead of one element per row)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accs):
        accs = [a for a in accs if a is not None]
        if not accs:
            return None
        units = []
        for u, bound in enumerate(accs[0]["bounds"]):
            parts = [a["units"][u] for a in accs]
            units.append(_truncate(*(np.concatenate([x[i] for x in parts]) for i in range(3)), bound))
        return {"quotas": accs[0]["quotas"], "bounds": accs[0]["bounds"], "units": units}

    def extract_output(self, acc):
        """Resolve the units in order, without replacement: -> sorted selected row keys, the
        unit each was selected for, and per-unit (rows, weight) taken."""
        if acc is None:
            return {"row_keys": np.zeros(0, np.uint64), "unit": np.zeros(0, np.int32), "taken": []}
        chosen_keys, chosen_unit, taken = [], [], []
        chosen = np.zeros(0, np.uint64)
        for u, (quota, (keys, rk, w)) in enumerate(zip(acc["quotas"], acc["units"])):
            order = _ranked(keys, rk)
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
        return {"row_keys": keys[order], "unit": unit[order], "taken": taken}


# ---------------------------------------------------------------------------------------
# Pass 3: decisions, selected counts, report


class _Decide(BatchFn):
    def __init__(self, p: ImportanceResampleParams):
        self.p = p

    def __call__(self, batch: pa.RecordBatch, selection) -> pa.RecordBatch:
        sel = selection["row_keys"]
        rk = batch.column(rows.ROW_KEY).to_numpy()
        if len(sel):
            pos = np.minimum(np.searchsorted(sel, rk), len(sel) - 1)
            keep = sel[pos] == rk
        else:
            pos = np.zeros(len(rk), np.int64)
            keep = np.zeros(len(rk), bool)
        short = batch.column(_NTOK).to_numpy() < self.p.min_tokens
        reason = np.where(short, TOO_SHORT, NOT_SELECTED)
        scores = {}
        if self.p.separate_targets:
            names = np.asarray(self.p.units, dtype=object)
            unit = selection["unit"][pos] if len(sel) else pos
            scores[TARGET_COLUMN] = pa.array(np.where(keep, names[unit], None).tolist(), pa.string())
        return with_decisions(batch, keep, reason, scores)


def _selected_counts(batch: pa.RecordBatch, p: ImportanceResampleParams):
    """Kept batch -> (unit name or '*' for all, (bucket counts, [rows, tokens]))."""
    batch = _featurize(_drop_internal(batch), p)
    ntok = batch.column(_NTOK).to_numpy()
    yield "*", (_bucket_counts(batch, p.num_buckets), np.array([batch.num_rows, ntok.sum()], np.int64))
    if p.separate_targets:
        units = np.asarray(batch.column(TARGET_COLUMN).to_pylist(), dtype=object)
        for name in np.unique(units).tolist():
            m = units == name
            yield name, (_bucket_counts(batch, p.num_buckets, m), np.array([m.sum(), ntok[m].sum()], np.int64))


def _report(_, model, raw, selection, selected: dict, p: ImportanceResampleParams) -> dict[str, Any]:
    B = p.num_buckets
    raw_counts = model["raw_counts"]
    raw_stats = raw[1] if raw is not None else np.zeros(5, np.int64)
    sel_all = selected.get("*", (np.zeros(B, np.int64), np.zeros(2, np.int64)))
    q_raw, q_sel = _probs(raw_counts), _probs(sel_all[0])

    def kls(target_counts, own=None):
        pt = _probs(target_counts, p.smoothing)
        out = {"kl_target_raw": kl_divergence(pt, q_raw), "kl_target_selected": kl_divergence(pt, q_sel)}
        out["kl_reduction"] = out["kl_target_raw"] - out["kl_target_selected"]
        if own is not None:
            out["kl_target_selected_own_quota"] = kl_divergence(pt, _probs(own))
        return out

    targets = {}
    for i, t in enumerate(p.target):
        st = model["target_stats"][t.name]
        entry = {"rows": int(st[0]), "tokens": int(st[1])}
        own = None
        if p.separate_targets:
            own = selected.get(t.name, (np.zeros(B, np.int64), np.zeros(2, np.int64)))
            taken = selection["taken"][i] if selection["taken"] else (0, 0)
            entry.update({"quota": int(model["quotas"][i]), "selected_rows": int(own[1][0]),
                          "selected_tokens": int(own[1][1])})
            own = own[0]
        entry.update(kls(model["per_source"][t.name], own))
        targets[t.name] = entry
    pooled = kls(np.sum([model["per_source"][t.name] for t in p.target], axis=0))
    rows_in, tokens_in, short, eligible_tokens, fit_rows = (int(x) for x in raw_stats)
    n_sel, tok_sel = int(sel_all[1][0]), int(sel_all[1][1])
    eligible = rows_in - short
    return {
        **pooled,
        "targets": targets,
        "pool": {"rows": rows_in, "tokens": tokens_in, "rows_fit_for_p_raw": fit_rows,
                 "eligible_rows": eligible,
                 "mean_tokens": tokens_in / rows_in if rows_in else 0.0,
                 "mean_tokens_eligible": eligible_tokens / eligible if eligible else 0.0},
        "selected": {"rows": n_sel, "tokens": tok_sel, "mean_tokens": tok_sel / n_sel if n_sel else 0.0},
        "dropped": {TOO_SHORT: short, NOT_SELECTED: eligible - n_sel},
        "thresholds": {"min_tokens": {"value": p.min_tokens, "dropped": short}},
        "settings": {"k": p.k, "token_budget": p.token_budget, "ngrams": p.ngrams,
                     "num_buckets": p.num_buckets, "smoothing": p.smoothing, "top_k": p.top_k,
                     "length_normalize": p.length_normalize, "separate_targets": p.separate_targets,
                     "quotas": [int(q) for q in model["quotas"]], "raw_fit_fraction": p.raw_fit_fraction,
                     "score_column": p.score_column},
    }


# ---------------------------------------------------------------------------------------
# The stage


class ImportanceResample(Stage):
    __doc__ = __doc__
    type_name = "importance_resample"
    Params = ImportanceResampleParams
    cost = "CPU: one hashing pass over pool and target, one scoring pass; memory ~ k rows"

    @classmethod
    def check(cls, params: ImportanceResampleParams, recipe: Any) -> list[str]:
        problems = []
        for i, src in enumerate(params.target):
            try:
                expand_source_files(recipe, src)
            except RecipeError as exc:
                problems += [f"params.target.{i}: {m}" for m in exc.problems]
        return problems

    def expand(self, batches):
        from thresher.io.ingest import read_side_source

        p, ctx, name = self.params, self.ctx, self.ctx.name
        pipeline = batches.pipeline
        recipe = ctx.extras["recipe"]

        featured = batches | f"{name}/Featurize" >> beam.Map(_featurize, p)
        raw = (featured | f"{name}/RawCounts" >> beam.ParDo(_RawCounts(p, ctx.seed))
               | f"{name}/SumRaw" >> beam.CombineGlobally(_SumArrays()))
        targets = (read_side_source(pipeline, recipe, p.target, label=f"{name}/ReadTarget")
                   | f"{name}/TargetCounts" >> beam.FlatMap(_target_counts, p)
                   | f"{name}/SumTarget" >> beam.CombinePerKey(_SumArrays()))
        model = (pipeline | f"{name}/ModelSeed" >> beam.Create([None])
                 | f"{name}/Model" >> beam.Map(_build_model, beam.pvalue.AsSingleton(raw),
                                               beam.pvalue.AsDict(targets), p))
        model_si = beam.pvalue.AsSingleton(model)

        scored = featured | MapBatches(_Score(p), name, model_si, label=f"{name}/Score")
        selection = (scored | f"{name}/Candidates" >> beam.ParDo(_Candidates(p, ctx.seed), model_si)
                     | f"{name}/TopK" >> beam.CombineGlobally(_TopCandidates()))
        decided = scored | MapBatches(_Decide(p), name, beam.pvalue.AsSingleton(selection),
                                      label=f"{name}/Decide")
        kept = decided | ApplyDecisions(self)

        selected = (kept | f"{name}/SelectedCounts" >> beam.FlatMap(_selected_counts, p)
                    | f"{name}/SumSelected" >> beam.CombinePerKey(_SumArrays()))
        report = (pipeline | f"{name}/ReportSeed" >> beam.Create([None])
                  | f"{name}/Report" >> beam.Map(_report, model_si, beam.pvalue.AsSingleton(raw),
                                                 beam.pvalue.AsSingleton(selection),
                                                 beam.pvalue.AsDict(selected), p))
        ctx.write_report(report)
        return kept | f"{name}/DropInternal" >> beam.Map(_drop_internal)
