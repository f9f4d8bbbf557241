"""What the model-in-the-loop selectors (`variance_filter`, `mcts_difficulty`) share.

Their params (policy, sampling, reward, rollout cache, budgets), the worker-side session that
owns the policy client and the rollout store (built in `BatchFn.setup`, so nothing with a
socket or a file handle is pickled), and the report plumbing: each scored batch carries its
call/cache/failure counts in internal columns; a combiner adds them up with the score
histograms into the stage report, and the columns are dropped before the shards.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core.stage import StageContext, StageParams, counter
from thresher.models.policy import CachedPolicy, PolicyParams, SamplingParams, check_policy, make_policy
from thresher.models.rewards import check_reward, make_reward
from thresher.models.rollout_store import RolloutStore

CALLS = "__model_calls"
CACHE_HITS = "__model_cache_hits"
FAILURES = "__model_failures"  # JSON {kind: n} per row
STAT_COLUMNS = (CALLS, CACHE_HITS, FAILURES)


class ModelSelectorParams(StageParams):
    policy: PolicyParams = Field(default_factory=PolicyParams, description="The policy model (see `policy:` keys).")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling settings.")
    answer_field: str = Field("answer", description="Row field with the reference answer (the "
                              "problem itself is the row's `text`).")
    reward: str = Field("math", description="`math` (math-verify equivalence), `exact`, `normalized`, "
                        "`choice` (multiple-choice letter), or a `module:function` user reward.")
    last_number_fallback: bool = Field(True, description="When a completion states no marked final "
                                       "answer (\\boxed, ####, 'The answer is'), judge its last number.")
    cache_path: str | None = Field(None, description="Rollout store (SQLite). Default: "
                                   "OUT/cache/rollouts.sqlite, so a rerun into the same output resumes.")
    max_calls_per_run: int | None = Field(None, gt=0, description="Most model calls (cache misses) "
                                          "this stage makes in one run, over all workers.")
    on_unscored: Literal["keep", "drop"] = Field("keep", description="Rows that could not be scored "
                                                 "(all calls failed, budget spent): `keep` them with null "
                                                 "scores, or `drop` them with reason `unscored`.")
    write_rollouts: bool = Field(False, description="Also write the generations as a column "
                                 "(for the training job).")


def check_model_params(params: ModelSelectorParams, recipe: Any) -> list[str]:
    out = check_policy(params.policy)
    bad = check_reward(params.reward)
    if bad:
        out.append(f"params.reward: {bad}")
    return out


def store_path(params: ModelSelectorParams, ctx: StageContext) -> str:
    if params.cache_path:
        recipe = ctx.extras.get("recipe")
        return recipe.resolve(params.cache_path) if recipe is not None else params.cache_path
    return os.path.join(ctx.out_dir, "cache", "rollouts.sqlite")


class ModelSession:
    """Worker-side: policy client + rollout store + reward. Built in `setup()`."""

    def __init__(self, params: ModelSelectorParams, ctx: StageContext, stage: str):
        self.params = params
        self.seed = ctx.seed
        self.path = store_path(params, ctx)
        self.stage = stage
        # A fresh scope per pipeline construction: a rerun gets a fresh run budget (its cache
        # hits cost nothing anyway).
        self.budget_scope = f"{stage}:{uuid.uuid4().hex}"
        self.cp: CachedPolicy | None = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["cp"] = None
        return d

    def open(self, with_policy: bool = True) -> None:
        """Load the reward; with the policy, also connect the client and open the store."""
        self.reward = make_reward(self.params.reward, self.params.last_number_fallback)
        if self.cp is not None or not with_policy:
            return
        store = RolloutStore(self.path)
        self.cp = CachedPolicy(make_policy(self.params.policy), store, self.params.sampling, self.seed)

    def allowance(self, wanted: int) -> int | None:
        """How many backend calls this step may make (None: unlimited)."""
        if self.params.max_calls_per_run is None:
            return None
        return self.cp.store.reserve(self.budget_scope, wanted, self.params.max_calls_per_run)

    def generate(self, requests):
        """Generate with the run budget applied; reserved-but-unused calls are not refunded
        (cache hits are known only after the lookup, so reserve only what might miss)."""
        if self.params.max_calls_per_run is None:
            return self.cp.generate(requests)
        keys = {self.cp.key(r) for r in requests}
        misses = len(keys) - len(self.cp.store.get_many(list(keys)))
        return self.cp.generate(requests, allow_calls=self.allowance(misses))

    def stats_snapshot(self) -> tuple[int, int, Counter]:
        s = self.cp.stats
        return s.calls, s.cache_hits, Counter(s.failures)

    def count(self, before: tuple[int, int, Counter]) -> None:
        calls, hits, fails = self.stats_snapshot()
        counter(f"{self.stage}/model_calls").inc(calls - before[0])
        counter(f"{self.stage}/cache_hits").inc(hits - before[1])
        for k, v in (fails - before[2]).items():
            counter(f"{self.stage}/failures/{k}").inc(v)


def stat_columns(calls: list[int], hits: list[int], failures: list[Counter]) -> dict[str, pa.Array]:
    return {
        CALLS: pa.array(calls, pa.int64()),
        CACHE_HITS: pa.array(hits, pa.int64()),
        FAILURES: pa.array([json.dumps(dict(f), sort_keys=True) for f in failures], pa.string()),
    }


def append_columns(batch: pa.RecordBatch, cols: dict[str, pa.Array]) -> pa.RecordBatch:
    for name, arr in cols.items():
        idx = batch.schema.get_field_index(name)
        batch = batch.set_column(idx, name, arr) if idx >= 0 else batch.append_column(name, arr)
    return batch


def strip_stats(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.drop_columns([c for c in STAT_COLUMNS if c in batch.schema.names])


def answers_of(batch: pa.RecordBatch, field: str) -> list[str | None]:
    if field not in batch.schema.names:
        raise KeyError(f"answer_field {field!r} is not a column (columns: {batch.schema.names})")
    return [None if v is None else str(v) for v in batch.column(field).to_pylist()]


def histogram(values: np.ndarray, edges: np.ndarray) -> dict[str, int]:
    values = values[~np.isnan(values)]
    counts, _ = np.histogram(values, bins=edges)
    return {f"{lo:.3g}-{hi:.3g}": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], counts)}


def add_nested(a: dict, b: dict) -> dict:
    """Add dicts of numbers (nested) key by key."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = add_nested(out.get(k, {}), v)
        else:
            out[k] = out.get(k, 0) + v
    return out


class SumSummaries(beam.CombineFn):
    """Per-batch summary dicts -> one dict (numbers added), finished by `finish`."""

    def __init__(self, summarise, finish):
        self.summarise = summarise
        self.finish = finish

    def create_accumulator(self):
        return {}

    def add_input(self, acc, batch):
        return add_nested(acc, self.summarise(batch))

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            out = add_nested(out, a)
        return out

    def extract_output(self, acc):
        return self.finish(acc)


def model_stats(batch: pa.RecordBatch) -> dict[str, Any]:
    fails: Counter = Counter()
    for s in batch.column(FAILURES).to_pylist():
        fails.update(json.loads(s))
    return {
        "rows": batch.num_rows,
        "model_calls": int(np.sum(batch.column(CALLS).to_numpy())),
        "cache_hits": int(np.sum(batch.column(CACHE_HITS).to_numpy())),
        "failures_by_kind": dict(fails),
    }


def with_policy_facts(report: dict[str, Any], params: ModelSelectorParams) -> dict[str, Any]:
    # What produced the numbers — never the API key (only the variable's name is in params).
    pol = params.policy
    report["policy"] = {"backend": pol.backend, "model": pol.model, "api": pol.api,
                        "base_url": pol.base_url if pol.backend == "openai" else None}
    report["sampling"] = params.sampling.model_dump()
    return report
