"""`importance_resample`: keep the pool rows that look like a target domain (DSIR).

Data Selection with Importance Resampling (Xie et al., 2023), as the official
`data-selection` package does it, on hashed n-gram features (see `ngram_features`):

* p_target: bucket counts over all target rows (+ `smoothing` per bucket), normalised;
  p_raw: bucket counts over the pool (or a `raw_fit_fraction` sample of it), normalised.
* log w(x) = sum_b counts_b(x) * (log(p_target[b] + 1e-8) - log(p_raw[b] + 1e-8)),
  divided by the row's token count when `length_normalize` is on.
* k rows (or `token_budget` tokens) are drawn without replacement by Gumbel top-k on log w
  (or plain top-k with `top_k: true`), among rows with at least `min_tokens` tokens.
  Tokens (`token_budget`, `min_tokens`, per-target quotas, the report's token counts) are
  model tokens of the recipe's `tokenizer:` (no special tokens); without one they are words
  (the n-gram features' word/punctuation tokens). A `token_budget` is never exceeded: the
  selection stops within one row of it.
* KL reduction = KL(target||raw) - KL(target||selected), KL(p||q) = sum p (log(p+1e-10) -
  log(q+1e-10)), reported per target.

In:  canonical batches; reuses `ngram_buckets`/`ngram_counts` when an `ngram_features` stage
     made them with the same `ngrams`/`num_buckets`, else hashes the text itself.
Out: the selected rows, with the score column `dsir_log_weight` (`dsir_log_weight_<target>`
     per target and `dsir_target` when `separate_targets`). Dropped rows have reason
     `too_short` (under `min_tokens`) or `not_selected`. Report (`reports/<stage>.json`):
     KL(target||raw), KL(target||selected) and the reduction per target, pool/selected row
     and token counts, how many rows `min_tokens` dropped, mean token counts (the weights'
     length bias), and `counted_by`: the tokenizer's name and sha256, or "words".
Cost: CPU only. One hashing pass over pool and target (~5-10 µs per 100-token row), then
     two light passes over the hashed pool: candidates (score + bounded top-k, reading a slim
     view of each batch: row keys, counts, features, id hashes) and decisions (the score
     again, a bincount per batch, cheaper than carrying it between passes).
     A tokenizer adds one `encode_batch` pass over pool and target (one thread: at most
     ~1 ms per 500-character row for MiniLM, measured on a heavily shared core).
     Memory: bucket-count vectors (num_buckets x 8 bytes per target) and a bounded
     candidate set (k rows, or the rows within `token_budget`, times the number of
     targets): the weights of the whole pool are never in one process.

Hooks: `score` hashes each batch into internal columns (`dsir_features`); `select` adds up the
pool's and the targets' bucket counts, builds the model (`dsir`), and merges each batch's best
candidates into the selection; `decide` writes the log-weight columns and keeps the selected
rows; `summarise` counts the kept rows' buckets for the KL report.

Determinism: the Gumbel noise of a row is a stable hash (xxh3) of (seed, target, row id),
not a draw from a global RNG stream, and ties are broken by `__row_key`; the selection is
the same for any runner parallelism and batch size.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from thresher.core import Selector, StageParams, rows
from thresher.core.columns import find_sorted, strings
from thresher.core.errors import RecipeError
from thresher.core.reports import SumSummaries
from thresher.io.ingest import read_side_source
from thresher.models.tokenizer import TokenizerHandle, recipe_tokenizer, require_tokenizer
from thresher.recipe.schema import Source, expand_source_files
from thresher.stages.selection import dsir
from thresher.stages.selection import dsir_features as feats

TOO_SHORT, NOT_SELECTED = "too_short", "not_selected"
TARGET_COLUMN = "dsir_target"


class ImportanceResampleParams(StageParams):
    target: list[Source] = Field(
        ..., min_length=1,
        description="Target-domain sources, written like the recipe's `sources` (name, paths, "
        "text_field/text_template ...).",
    )
    k: int | None = Field(None, gt=0, description="Rows to select (give `k` or `token_budget`).")
    token_budget: int | None = Field(
        None, gt=0,
        description="Instead of `k`: select rows in weight order while their token counts sum "
        "to at most this budget: model tokens of the recipe's `tokenizer:`, else words.",
    )
    ngrams: int = Field(2, ge=1, le=5, description="Largest n-gram order (2: unigrams + bigrams).")
    num_buckets: int = Field(10_000, ge=1, le=1 << 24, description="Hash buckets of the features.")
    smoothing: float = Field(
        0.0, ge=0.0, description="Laplace smoothing: added to every target bucket count (official: 0)."
    )
    min_tokens: int = Field(
        5, ge=0,
        description="Rows with fewer tokens (the budget's unit: model tokens with a `tokenizer:`, "
        "else words) are never selected (reason `too_short`). The official "
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
        description="Divide log w by the row's word count (words even with a `tokenizer:`: the "
        "features are words). The plain weight grows with length "
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
    def _check(self) -> ImportanceResampleParams:
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

    @property
    def total(self) -> int:
        return self.k if self.k is not None else self.token_budget

    def score_columns(self) -> list[str]:
        if not self.separate_targets:
            return [self.score_column]
        return [f"{self.score_column}_{name}" for name in self.units]


# ---------------------------------------------------------------------------------------
# Global step: counts -> model -> candidates -> selection (picklable callables: they run on
# the workers)


class RawCounts:
    """Pool batch -> {counts: bucket counts, stats: [rows, tokens, too_short rows, eligible
    tokens, rows fit for p_raw]}."""

    def __init__(self, p: ImportanceResampleParams, seed: int):
        self.p, self.seed = p, seed

    def __call__(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        ntok = feats.n_tokens(batch)
        mask = None
        if self.p.raw_fit_fraction < 1.0:
            u = dsir.uniform(dsir.row_hashes(batch.column(rows.ID), self.seed), dsir.RAW_SAMPLE_STREAM)
            mask = u < self.p.raw_fit_fraction
        short = ntok < self.p.min_tokens
        stats = np.array([batch.num_rows, ntok.sum(), short.sum(), ntok[~short].sum(),
                          batch.num_rows if mask is None else mask.sum()], np.int64)
        return {"counts": feats.bucket_counts(batch, self.p.num_buckets, mask), "stats": stats}


class TargetCounts:
    """Target batch (one source) -> {source name: {counts, stats: [rows, tokens]}}."""

    def __init__(self, p: ImportanceResampleParams, tokenizer: TokenizerHandle | None = None):
        self.p, self.tokenizer = p, tokenizer

    def __call__(self, batch: pa.RecordBatch) -> dict[str, dict[str, np.ndarray]]:
        batch = feats.featurize(batch, self.p.ngrams, self.p.num_buckets, self.tokenizer)
        ntok = feats.n_tokens(batch)
        return {batch.column(rows.SOURCE)[0].as_py(): {
            "counts": feats.bucket_counts(batch, self.p.num_buckets),
            "stats": np.array([batch.num_rows, ntok.sum()], np.int64)}}


def build_model(_, raw: dict, targets: dict, p: ImportanceResampleParams) -> dsir.Model:
    raw_counts = raw["counts"] if raw else np.zeros(p.num_buckets, np.int64)
    return dsir.build_model(raw_counts, targets, [t.name for t in p.target], p.separate_targets, p.smoothing,
                            p.total, p.target_proportions)


def batch_scores(batch: pa.RecordBatch, model: dsir.Model, p: ImportanceResampleParams) -> np.ndarray:
    row, b, c = feats.occurrences(batch)
    return dsir.scores(row, b, c, feats.n_words(batch), model.log_diff, p.length_normalize)


class CandidateView:
    """Scored pool batch -> `dsir_features.candidate_view` (a few of its columns)."""

    def __init__(self, p: ImportanceResampleParams, seed: int):
        self.seed = None if p.top_k else seed

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return feats.candidate_view(batch, self.seed)


def batch_candidates(view: pa.RecordBatch, model: dsir.Model, p: ImportanceResampleParams) -> dsir.Candidates:
    """A batch's `CandidateView` -> per unit, its best rows (by Gumbel-noised or plain log w)."""
    ntok = feats.n_tokens(view)
    eligible = ntok >= p.min_tokens
    rk = view.column(rows.ROW_KEY).to_numpy()[eligible]
    weights = np.ones(int(eligible.sum()), np.int64) if p.k is not None else ntok[eligible].astype(np.int64)
    h = view.column(feats.ROW_HASH).to_numpy()[eligible] if not p.top_k else None
    units = []
    for u, s in enumerate(batch_scores(view, model, p)):
        keys = s[eligible]
        if not p.top_k:
            keys = keys + dsir.gumbel(h, u)
        units.append(dsir.bounded(keys, rk, weights, model.bounds[u]))
    return dsir.Candidates(model.quotas, model.bounds, units)


def bundle(model: dsir.Model, raw: dict, selection: dsir.Selection) -> dict[str, Any]:
    """The one element `select` hands to `decide` (model, selection) and `report` (model,
    the pool's stats)."""
    return {"model": model, "raw_stats": raw["stats"] if raw else np.zeros(5, np.int64), "selection": selection}


# ---------------------------------------------------------------------------------------
# The stage


class ImportanceResample(Selector):
    __doc__ = __doc__
    type_name = "importance_resample"
    Params = ImportanceResampleParams
    cost = "CPU: one hashing pass over pool and target, two light scoring passes; memory ~ k rows"
    internal_columns = feats.COLUMNS

    @property
    def tokenizer(self) -> TokenizerHandle | None:
        """The recipe's tokenizer (loaded once per process), or None: counts are words."""
        return recipe_tokenizer(self.ctx.recipe)

    def check(self) -> list[str]:
        if self.ctx.recipe is None:
            return ["params.target: the target sources resolve against the recipe, and this stage has none"]
        require_tokenizer(self.ctx.recipe)  # the recipe's own key: raised as a recipe error
        problems = []
        for i, src in enumerate(self.params.target):
            try:
                expand_source_files(self.ctx.recipe, src)
            except RecipeError as exc:
                problems += [f"params.target.{i}: {m}" for m in exc.problems]
        return problems

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        p = self.params
        return feats.feature_columns(batch, p.ngrams, p.num_buckets, self.tokenizer, p.length_normalize)

    def select(self, scored: beam.PCollection) -> beam.PCollection:
        p, seed = self.params, self.ctx.seed
        raw = scored | "RawCounts" >> beam.CombineGlobally(SumSummaries(RawCounts(p, seed)))
        targets = (read_side_source(scored.pipeline, self.ctx.recipe, p.target, label="ReadTarget")
                   | "TargetCounts" >> beam.CombineGlobally(SumSummaries(TargetCounts(p, self.tokenizer))))
        model = (scored.pipeline | "ModelSeed" >> beam.Create([None])
                 | "Model" >> beam.Map(build_model, beam.pvalue.AsSingleton(raw),
                                       beam.pvalue.AsSingleton(targets), p))
        model_si = beam.pvalue.AsSingleton(model)
        # The candidates pass waits for the model, so what it reads crosses the runner's data
        # plane: a slim view of each batch, made in the featurising pass, not the batch.
        selection = (scored | "CandidateView" >> beam.Map(CandidateView(p, seed))
                     | "Candidates" >> beam.Map(batch_candidates, model_si, p)
                     | "TopK" >> beam.CombineGlobally(dsir.TopCandidates()))
        return model | "Bundle" >> beam.Map(bundle, beam.pvalue.AsSingleton(raw), beam.pvalue.AsSingleton(selection))

    def decide(self, batch: pa.RecordBatch, selected: dict[str, Any]):
        p, sel = self.params, selected["selection"]
        scores = batch_scores(batch, selected["model"], p)
        columns: dict[str, Any] = {name: pa.array(s, pa.float64())
                                   for name, s in zip(p.score_columns(), scores, strict=True)}
        keep, pos = find_sorted(batch.column(rows.ROW_KEY).to_numpy(), sel.row_keys)
        if p.separate_targets:
            names = np.asarray(p.units, dtype=object)
            unit = sel.unit[pos] if len(sel.row_keys) else pos
            columns[TARGET_COLUMN] = pa.array(np.where(keep, names[unit], None).tolist(), pa.string())
        short = feats.n_tokens(batch) < p.min_tokens
        # One string when it is the only reason: the template's cheap path (no per-row list);
        # else an Arrow array (a NumPy one becomes a Python string per row there).
        reason = pc.if_else(pa.array(short), TOO_SHORT, NOT_SELECTED) if short.any() else NOT_SELECTED
        return keep, reason, columns

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        """The kept rows' bucket counts and [rows, tokens]: all of them, and per target."""
        ntok = feats.n_tokens(batch)

        def part(mask):
            return {"counts": feats.bucket_counts(batch, self.params.num_buckets, mask),
                    "stats": np.array([mask.sum(), ntok[mask].sum()], np.int64)}

        out: dict[str, Any] = {"all": part(keep)}
        if self.params.separate_targets:
            units = strings(batch, TARGET_COLUMN)
            out["units"] = {name: part(keep & (units == name)) for name in np.unique(units[keep]).tolist()}
        return out

    def report(self, summary: dict[str, Any], selected: dict[str, Any]) -> dict[str, Any]:
        tok = self.tokenizer
        return kl_report(self.params, selected["model"], selected["raw_stats"], summary,
                         tok.describe() if tok is not None else "words")


def kl_report(p: ImportanceResampleParams, model: dsir.Model, raw_stats: np.ndarray,
              summary: dict[str, Any], counted_by: dict[str, str] | str = "words") -> dict[str, Any]:
    """KL(target||raw), KL(target||selected) and their difference, pooled and per target, with
    the pool's and the selection's row and token counts."""
    B = p.num_buckets
    empty = {"counts": np.zeros(B, np.int64), "stats": np.zeros(2, np.int64)}
    sel_all = summary.get("all", empty)
    q_raw, q_sel = dsir.probs(model.raw_counts), dsir.probs(sel_all["counts"])

    def kls(target_counts, own=None):
        pt = dsir.probs(target_counts, p.smoothing)
        out = {"kl_target_raw": dsir.kl_divergence(pt, q_raw), "kl_target_selected": dsir.kl_divergence(pt, q_sel)}
        out["kl_reduction"] = out["kl_target_raw"] - out["kl_target_selected"]
        if own is not None:
            out["kl_target_selected_own_quota"] = dsir.kl_divergence(pt, dsir.probs(own))
        return out

    targets = {}
    for i, t in enumerate(p.target):
        st = model.target_stats[t.name]
        entry = {"rows": int(st[0]), "tokens": int(st[1])}
        own = None
        if p.separate_targets:
            mine = summary.get("units", {}).get(t.name, empty)
            entry.update({"quota": int(model.quotas[i]), "selected_rows": int(mine["stats"][0]),
                          "selected_tokens": int(mine["stats"][1])})
            own = mine["counts"]
        entry.update(kls(model.per_source[t.name], own))
        targets[t.name] = entry
    pooled = kls(np.sum([model.per_source[t.name] for t in p.target], axis=0))
    rows_in, tokens_in, short, eligible_tokens, fit_rows = (int(x) for x in raw_stats)
    n_sel, tok_sel = int(sel_all["stats"][0]), int(sel_all["stats"][1])
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
        "counted_by": counted_by,
        "settings": {"k": p.k, "token_budget": p.token_budget, "ngrams": p.ngrams,
                     "num_buckets": p.num_buckets, "smoothing": p.smoothing, "top_k": p.top_k,
                     "length_normalize": p.length_normalize, "separate_targets": p.separate_targets,
                     "quotas": [int(q) for q in model.quotas], "raw_fit_fraction": p.raw_fit_fraction,
                     "score_column": p.score_column},
    }
