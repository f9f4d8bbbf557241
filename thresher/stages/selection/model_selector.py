"""What the model-in-the-loop selectors (`variance_filter`, `mcts_difficulty`) share.

`ModelSelectorParams`: the policy, sampling, reward, rollout cache and budgets. `ModelSelector`:
a `Selector` that builds a `ModelSession` on the driver and opens it in `setup()` on each
worker, and the report plumbing — a stage's `score` tallies each row's model calls, cache hits
and failures (`CallTally`) into internal columns; `summarise` adds them up with the stage's own
statistics, `report` fills in the totals and says which policy produced them. The internal
columns never reach the shards.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import Selector, StageParams
from thresher.core.context import StageContext
from thresher.models.policy import BUDGET, Generation, PolicyParams, SamplingParams
from thresher.models.policy_backends import check_policy
from thresher.models.rewards import check_reward
from thresher.models.session import ModelSession

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


class CallTally:
    """One batch's model calls, cache hits and failures by kind, per row."""

    def __init__(self, n_rows: int):
        self.calls = [0] * n_rows
        self.hits = [0] * n_rows
        self.failures = [Counter() for _ in range(n_rows)]

    def add(self, row: int, g: Generation) -> None:
        if g.cached:
            self.hits[row] += 1
        elif g.error != BUDGET:  # refused by the run budget: never sent
            self.calls[row] += 1
        if g.text is None:
            self.failures[row][g.error] += 1

    def columns(self) -> dict[str, pa.Array]:
        """The internal stat columns `ModelSelector.summarise` adds up."""
        return {
            CALLS: pa.array(self.calls, pa.int64()),
            CACHE_HITS: pa.array(self.hits, pa.int64()),
            FAILURES: pa.array([json.dumps(dict(f), sort_keys=True) for f in self.failures], pa.string()),
        }


def answers_of(batch: pa.RecordBatch, field: str) -> list[str | None]:
    """The reference answers (`answer_field`) as text, None where missing."""
    if field not in batch.schema.names:
        raise KeyError(f"answer_field {field!r} is not a column (columns: {batch.schema.names})")
    return [None if v is None else str(v) for v in batch.column(field).to_pylist()]


class ModelSelector(Selector):
    """Base of selectors that sample a policy model: the session, checks and report plumbing.
    A subclass's `score` works inside `with self.session.counting():` and adds
    `CallTally.columns()`; its `summarise`/`report` extend these."""

    Params = ModelSelectorParams
    internal_columns = STAT_COLUMNS

    def __init__(self, params: StageParams | dict[str, Any] | None = None, ctx: StageContext | None = None):
        super().__init__(params, ctx)
        p = self.params
        # Built here, on the driver, so that every worker shares its run-budget scope.
        self.session = ModelSession(
            stage=self.name, seed=self.ctx.seed, policy=p.policy, sampling=p.sampling, reward=p.reward,
            last_number=p.last_number_fallback, store_path=self.store_path(), max_calls_per_run=p.max_calls_per_run)

    @property
    def uses_model(self) -> bool:
        """False when the stage reads what a model said from the rows (no policy to call)."""
        return True

    @property
    def uses_reward(self) -> bool:
        return True

    def store_path(self) -> str:
        if self.params.cache_path:
            return self.ctx.resolve(self.params.cache_path)
        return os.path.join(self.ctx.out_dir, "cache", "rollouts.sqlite")

    def check(self) -> list[str]:
        out = check_policy(self.params.policy) if self.uses_model else []
        bad = check_reward(self.params.reward) if self.uses_reward else None
        if bad:
            out.append(f"params.reward: {bad}")
        return out

    def setup(self) -> None:
        self.session.open(with_policy=self.uses_model)

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        fails: Counter = Counter()
        for s in batch.column(FAILURES).to_pylist():
            fails.update(json.loads(s))
        return {
            "rows": batch.num_rows,
            "model_calls": int(np.sum(batch.column(CALLS).to_numpy())),
            "cache_hits": int(np.sum(batch.column(CACHE_HITS).to_numpy())),
            "failures_by_kind": dict(fails),
        }

    def report(self, summary: dict[str, Any], selected: Any = None) -> dict[str, Any]:
        out = dict(summary)
        for key, empty in (("rows", 0), ("model_calls", 0), ("cache_hits", 0), ("failures_by_kind", {})):
            out.setdefault(key, empty)
        if self.uses_model:
            # What produced the numbers — never the API key (params hold only the variable's name).
            pol = self.params.policy
            out["policy"] = {"backend": pol.backend, "model": pol.model, "api": pol.api,
                             "base_url": pol.base_url if pol.backend == "openai" else None}
            out["sampling"] = self.params.sampling.model_dump()
        return out
