"""`variance_filter`: keep the problems a policy sometimes solves (reward variance > 0).

As in DAPO's dynamic sampling / Temporal-R1: a problem the policy always solves or never
solves gives a group-relative RL update no signal. Each row's `text` is the problem and
`answer_field` its reference answer.

In:  rows with a problem and a reference answer — or rows that already carry rewards
     (`precomputed_rewards`: dotted paths such as `samples.correct` or `6b_finetuning.is_correct`)
     or already-sampled responses (`precomputed_responses`), which are then rewarded here.
Out: rows with `solve_rate` (mean reward), `reward_variance` (population variance),
     `n_rollouts` (rewards that went into them), `rollout_failures`, `variance_status`
     (`scored` or why not: a failure kind, `budget_exhausted`, `no_reference`) and, with
     `write_rollouts`, `rollouts` (list of {text, reward, extracted, reward_failure}). Rows are dropped with reason
     `all_correct` / `all_wrong` / `all_equal` (zero variance), `low_variance`,
     `solve_rate_out_of_band`, `over_source_quota`, `below_top_k` or `unscored`.
Cost: `n` model calls per problem (default 8), each answered from the rollout store when a
     previous run made it. With `top_k` or `source_quotas`, one extra light pass: a combiner
     keeps the best `min(quota, top_k)` (variance, row key) pairs per source.
Stats (report): solve-rate and variance histograms, model calls, cache hits, failures by kind,
     reward failures by kind (`no_answer`, `timeout`, ...), `slot_occupancy`.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thresher.core import rows
from thresher.core.columns import member, numpy, strings
from thresher.core.reports import histogram
from thresher.models.policy import Request
from thresher.stages.selection.model_selector import (
    CallTally,
    ModelSelector,
    ModelSelectorParams,
    SlotTimer,
    answers_of,
    grade_all,
)

SCORED = "scored"
# One generation in the `rollouts` column: what was extracted from it and why a zero score is
# not a wrong answer (`reward_failure`, e.g. `no_answer`), so the training job can audit it.
ROLLOUT = pa.struct([("text", pa.string()), ("reward", pa.float64()), ("extracted", pa.string()),
                     ("reward_failure", pa.string())])


class VarianceFilterParams(ModelSelectorParams):
    n: int = Field(8, ge=2, le=1024, description="Rollouts per problem.")
    min_rollouts: int = Field(2, ge=2, description="Fewest successful rollouts for a row to count as "
                              "scored (the rest of `n` may have failed).")
    drop_all_equal: bool = Field(True, description="Drop rows whose rewards are all equal "
                                 "(all correct / all wrong).")
    min_variance: float = Field(0.0, ge=0, description="Drop rows with reward variance below this.")
    solve_rate_band: tuple[float, float] | None = Field(None, description="Keep only rows whose "
                                                        "solve rate lies in [low, high].")
    top_k: int | None = Field(None, gt=0, description="Keep at most this many rows overall, highest "
                              "variance first (ties: input order).")
    source_quotas: dict[str, int] = Field(default_factory=dict, description="Most rows kept per "
                                          "source (highest variance first); sources not listed are "
                                          "unlimited.")
    precomputed_rewards: list[str] = Field(default_factory=list, description="Read rewards from the "
                                           "row instead of calling a model: dotted paths to a number/"
                                           "bool or a list of them (e.g. `samples.correct`).")
    precomputed_responses: list[str] = Field(default_factory=list, description="Reward responses "
                                             "already in the row (dotted paths to text or lists of "
                                             "text) instead of calling a model.")

    @model_validator(mode="after")
    def _band(self) -> VarianceFilterParams:
        if self.solve_rate_band is not None:
            lo, hi = self.solve_rate_band
            if not 0 <= lo <= hi <= 1:
                raise ValueError("solve_rate_band must be [low, high] with 0 <= low <= high <= 1")
        if self.precomputed_rewards and self.precomputed_responses:
            raise ValueError("give precomputed_rewards or precomputed_responses, not both")
        return self

    @property
    def uses_model(self) -> bool:
        return not (self.precomputed_rewards or self.precomputed_responses)


def _walk(value: Any, parts: list[str]) -> list[Any]:
    """Values at a dotted path; lists on the way are mapped over."""
    if isinstance(value, str) and parts and value[:1] in "[{":
        try:  # ingest stores mixed-type fields as JSON text
            value = json.loads(value)
        except ValueError:
            return []
    if value is None:
        return []
    if isinstance(value, list):
        return [x for v in value for x in _walk(v, parts)]
    if not parts:
        return [value]
    if isinstance(value, dict):
        return _walk(value.get(parts[0]), parts[1:])
    return []


def values_at(batch: pa.RecordBatch, paths: list[str]) -> list[list[Any]]:
    out: list[list[Any]] = [[] for _ in range(batch.num_rows)]
    for path in paths:
        top, *rest = path.split(".")
        if top not in batch.schema.names:
            raise KeyError(f"field {top!r} of {path!r} is not a column (columns: {batch.schema.names})")
        for i, v in enumerate(batch.column(top).to_pylist()):
            out[i].extend(_walk(v, rest))
    return out



def local_decisions(batch: pa.RecordBatch, p: VarianceFilterParams) -> tuple[np.ndarray, list[str | None]]:
    """The row-local rules (unscored, all equal, low variance, band) -> (keep, reason per row)."""
    rate = numpy(batch, "solve_rate")
    var = numpy(batch, "reward_variance")
    scored = ~np.isnan(var)
    keep = np.ones(batch.num_rows, bool)
    reason: list[str | None] = [None] * batch.num_rows
    for i in range(batch.num_rows):
        if not scored[i]:
            if p.on_unscored == "drop":
                keep[i], reason[i] = False, "unscored"
            continue
        if p.drop_all_equal and var[i] <= 1e-12:
            keep[i] = False
            reason[i] = "all_correct" if rate[i] >= 1 - 1e-12 else "all_wrong" if rate[i] <= 1e-12 else "all_equal"
        elif var[i] < p.min_variance:
            keep[i], reason[i] = False, "low_variance"
        elif p.solve_rate_band is not None and not (p.solve_rate_band[0] <= rate[i] <= p.solve_rate_band[1]):
            keep[i], reason[i] = False, "solve_rate_out_of_band"
    return keep, reason


class TopCandidates(beam.CombineFn):
    """(variance, row key) of row-locally kept, scored rows -> the keys top-k/quotas keep.

    Each source keeps only its best min(quota, top_k) pairs, so memory is bounded by
    those numbers, not the corpus. Order: variance high to low, then row key (input order).
    """

    def __init__(self, p: VarianceFilterParams):
        self.p = p

    def _cap(self, source: str) -> int | None:
        caps = [c for c in (self.p.source_quotas.get(source), self.p.top_k) if c is not None]
        return min(caps) if caps else None

    @staticmethod
    def _best(var: np.ndarray, keys: np.ndarray, cap: int | None):
        order = np.lexsort((keys, -var))
        if cap is not None:
            order = order[:cap]
        return var[order], keys[order]

    def create_accumulator(self):
        return {}

    def add_input(self, acc, batch):
        keep, _ = local_decisions(batch, self.p)
        var = numpy(batch, "reward_variance")
        keep &= ~np.isnan(var)
        keys = batch.column(rows.ROW_KEY).to_numpy()
        src = strings(batch, rows.SOURCE)
        for s in np.unique(src[keep]) if keep.any() else []:
            m = keep & (src == s)
            old_v, old_k = acc.get(s, (np.zeros(0), np.zeros(0, np.uint64)))
            acc[s] = self._best(np.concatenate([old_v, var[m]]), np.concatenate([old_k, keys[m]]), self._cap(s))
        return acc

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            for s, (v, k) in a.items():
                old_v, old_k = out.get(s, (np.zeros(0), np.zeros(0, np.uint64)))
                out[s] = self._best(np.concatenate([old_v, v]), np.concatenate([old_k, k]), self._cap(s))
        return out

    def extract_output(self, acc):
        """-> (keys kept by quotas, keys kept by top-k or None without `top_k`), each sorted."""
        if not acc:
            empty = np.zeros(0, np.uint64)
            return empty, empty
        quota_keys = np.sort(np.concatenate([k for _, k in acc.values()]).astype(np.uint64))
        if self.p.top_k is None:
            return quota_keys, None
        v = np.concatenate([v for v, _ in acc.values()])
        k = np.concatenate([k for _, k in acc.values()]).astype(np.uint64)
        _, top = self._best(v, k, self.p.top_k)
        return quota_keys, np.sort(top)


class VarianceFilter(ModelSelector):
    __doc__ = __doc__
    type_name = "variance_filter"
    Params = VarianceFilterParams
    cost = "model: n calls per problem (cached on disk); CPU: rewards (math-verify)"

    @property
    def uses_model(self) -> bool:
        return self.params.uses_model  # precomputed rewards or responses need no model

    @property
    def uses_reward(self) -> bool:
        return not self.params.precomputed_rewards

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Rewards per problem -> solve rate, population variance, status (no decision yet)."""
        p = self.params
        n_rows = batch.num_rows
        texts: list[list[str | None]] = [[] for _ in range(n_rows)]
        grades: list[list[tuple[float, str | None, str | None]]] = [[] for _ in range(n_rows)]
        tally = CallTally(n_rows)
        slots = SlotTimer(self.session)
        refs = None
        if p.precomputed_rewards:
            rewards = [[float(x) for x in r if isinstance(x, (bool, int, float))]
                       for r in values_at(batch, p.precomputed_rewards)]
        else:
            refs = answers_of(batch, p.answer_field)
            if p.precomputed_responses:
                texts = [[t for t in r if isinstance(t, str)] for r in values_at(batch, p.precomputed_responses)]
            else:
                texts = self._sample(batch.column(rows.TEXT).to_pylist(), tally, slots)
            grades = self._grade(texts, refs, tally)
            rewards = [[g[0] for g in row] for row in grades]
        rate = np.full(n_rows, np.nan)
        var = np.full(n_rows, np.nan)
        status = []
        for i, r in enumerate(rewards):
            if len(r) >= p.min_rollouts:
                a = np.asarray(r, dtype=float)
                rate[i], var[i] = a.mean(), a.var()  # population variance (ddof=0)
                status.append(SCORED)
            elif refs is not None and refs[i] is None:
                status.append("no_reference")
            elif tally.failures[i]:
                status.append(tally.failures[i].most_common(1)[0][0])
            else:
                status.append("too_few_rewards")
        cols = {
            "solve_rate": pa.array(rate, pa.float64(), mask=np.isnan(rate)),
            "reward_variance": pa.array(var, pa.float64(), mask=np.isnan(var)),
            "n_rollouts": pa.array([len(r) for r in rewards], pa.int32()),
            "rollout_failures": pa.array([sum(f.values()) for f in tally.failures], pa.int32()),
            "variance_status": pa.array(status, pa.string()),
        }
        if p.write_rollouts and texts and any(texts):
            # A row without a reference has texts but no rewards: its list is empty.
            cols["rollouts"] = pa.array(
                [[{"text": t, "reward": g[0], "extracted": g[1], "reward_failure": g[2]}
                  for t, g in zip([t for t in tx if t is not None], grades[i], strict=False)]
                 for i, tx in enumerate(texts)],
                pa.list_(ROLLOUT))
        return {**cols, **tally.columns(), **slots.columns(n_rows)}

    def _grade(self, texts: list[list[str | None]], refs: list[str | None],
               tally: CallTally) -> list[list[tuple[float, str | None, str | None]]]:
        """(score, extracted answer, reward failure) per generated text of each row with a
        reference, all rows graded in one `grade_all` call; failures tallied per row."""
        owner = [i for i, tx in enumerate(texts) if refs[i] is not None for t in tx if t is not None]
        pairs = [(t, refs[i]) for i, tx in enumerate(texts) if refs[i] is not None for t in tx if t is not None]
        out: list[list[tuple[float, str | None, str | None]]] = [[] for _ in texts]
        for i, g in zip(owner, grade_all(self.session.reward, pairs), strict=True):
            out[i].append(g)
            if g[2] is not None:
                tally.reward_failures[i][g[2]] += 1
        return out

    def _sample(self, problems: list[str], tally: CallTally, slots: SlotTimer) -> list[list[str | None]]:
        """`n` generations per problem (None where a call failed), tallied per row."""
        n = self.params.n
        reqs = [Request(q, sample=str(j)) for q in problems for j in range(n)]
        with self.session.counting(), slots:
            gens = self.session.generate(reqs)
        texts: list[list[str | None]] = [[] for _ in problems]
        for idx, g in enumerate(gens):
            texts[idx // n].append(g.text)
            tally.add(idx // n, g)
        return texts

    def select(self, scored: beam.PCollection) -> beam.PCollection:
        if self.params.top_k is None and not self.params.source_quotas:
            return scored.pipeline | "NoRanking" >> beam.Create([None])  # decide needs no global step
        return scored | "TopCandidates" >> beam.CombineGlobally(TopCandidates(self.params))

    def decide(self, batch: pa.RecordBatch, selected: tuple[np.ndarray, np.ndarray | None] | None):
        keep, reason = local_decisions(batch, self.params)
        if selected is None:
            return keep, reason
        quota_keys, top_keys = selected
        keys = batch.column(rows.ROW_KEY).to_numpy()
        scored = ~np.isnan(numpy(batch, "reward_variance"))
        src = batch.column(rows.SOURCE).to_pylist()
        in_quota = member(keys, quota_keys)
        in_top = member(keys, top_keys) if top_keys is not None else np.ones(len(keys), bool)
        for i in range(batch.num_rows):
            if not (keep[i] and scored[i]):
                continue
            if src[i] in self.params.source_quotas and not in_quota[i]:
                keep[i], reason[i] = False, "over_source_quota"
            elif not in_top[i]:
                keep[i], reason[i] = False, "below_top_k"
        return keep, reason

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        rate = numpy(batch, "solve_rate").astype(float)
        var = numpy(batch, "reward_variance").astype(float)
        out = super().summarise(batch, keep)
        out["solve_rate_histogram"] = histogram(rate, np.linspace(0, 1, 11))
        out["variance_histogram"] = histogram(var, np.linspace(0, 0.25, 11))
        out["status"] = dict(Counter(batch.column("variance_status").to_pylist()))
        out["all_correct"] = int(np.sum(rate >= 1 - 1e-12))
        out["all_wrong"] = int(np.sum((rate <= 1e-12) & ~np.isnan(rate)))
        out["rollouts"] = int(np.sum(batch.column("n_rollouts").to_numpy()))
        return out
