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
import threading
import time
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import Selector, StageParams
from thresher.core.context import StageContext
from thresher.io import fs
from thresher.models.policy import BUDGET, Generation, PolicyParams, SamplingParams
from thresher.models.policy_backends import check_policy
from thresher.models.rewards import check_reward
from thresher.models.session import ModelSession

CALLS = "__model_calls"
CACHE_HITS = "__model_cache_hits"
FAILURES = "__model_failures"  # JSON {kind: n} per row
REWARD_FAILURES = "__reward_failures"  # JSON {kind: n} per row
SLOT_BUSY = "__slot_busy_s"  # a batch's busy slot-seconds, on its first row
SLOT_CAPACITY = "__slot_capacity_s"  # slots x wall seconds of the same span
STAT_COLUMNS = (CALLS, CACHE_HITS, FAILURES, REWARD_FAILURES, SLOT_BUSY, SLOT_CAPACITY)


class ModelSelectorParams(StageParams):
    policy: PolicyParams = Field(default_factory=PolicyParams, description="The policy model (see `policy:` keys).")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling settings.")
    answer_field: str = Field("answer", description="Row field with the reference answer (the "
                              "problem itself is the row's `text`).")
    reward: str = Field("math", description="`math` (math-verify end to end: its answer extraction and "
                        "equivalence), `exact`, `normalized`, `choice` (the option letter chosen), `code` "
                        "(HumanEval-style tests run in a sandboxed subprocess), or a `module:function` user reward.")
    reward_timeout_s: float = Field(5.0, gt=0, description="Time limit per graded completion (math, code and "
                                    "module:function rewards); past it the completion scores 0 with reward "
                                    "failure `timeout`.")
    last_number_fallback: bool = Field(True, description="When a completion states no marked final "
                                       "answer (\\boxed, ####, 'The answer is'), judge its last number.")
    cache_path: str | None = Field(None, description="Rollout store (SQLite). Default: rollouts.sqlite in "
                                   "the recipe's cache folder (OUT/cache/), so every later run resumes.")
    max_calls_per_run: int | None = Field(None, gt=0, description="Most model calls (cache misses) "
                                          "this stage makes in one run, over all workers.")
    on_unscored: Literal["keep", "drop"] = Field("keep", description="Rows that could not be scored "
                                                 "(all calls failed, budget spent): `keep` them with null "
                                                 "scores, or `drop` them with reason `unscored`.")
    write_rollouts: bool = Field(False, description="Also write the generations as a column "
                                 "(for the training job).")


class CallTally:
    """One batch's model calls, cache hits, failures by kind and reward failures by kind
    (`reward_failures[row][kind] += 1`), per row."""

    def __init__(self, n_rows: int):
        self.calls = [0] * n_rows
        self.hits = [0] * n_rows
        self.failures = [Counter() for _ in range(n_rows)]
        self.reward_failures = [Counter() for _ in range(n_rows)]
        self._lock = threading.Lock()

    def add(self, row: int, g: Generation) -> None:
        with self._lock:  # called from the policy's thread as responses arrive
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
            REWARD_FAILURES: pa.array([json.dumps(dict(f), sort_keys=True) for f in self.reward_failures],
                                      pa.string()),
        }


class SlotTimer:
    """`with SlotTimer(session) as st:` around a batch's model work measures how busy the
    policy's request slots were: `st.columns(n)` carries it to `summarise`, and the report's
    `slot_occupancy` is busy slot-seconds / (slots x wall seconds) over all batches (null for
    backends that do not measure it)."""

    def __init__(self, session: ModelSession):
        self.session = session
        self.busy = self.capacity = 0.0

    def __enter__(self) -> SlotTimer:
        self._b0, self._t0 = self.session.slot_clock(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        b1, t1 = self.session.slot_clock(), time.perf_counter()
        if self._b0 is not None and b1 is not None:
            self.busy, self.capacity = b1[0] - self._b0[0], b1[1] * (t1 - self._t0)

    def columns(self, n_rows: int) -> dict[str, pa.Array]:
        first = np.zeros(n_rows)
        busy, cap = first.copy(), first.copy()
        if n_rows:
            busy[0], cap[0] = self.busy, self.capacity
        return {SLOT_BUSY: pa.array(busy, pa.float64()), SLOT_CAPACITY: pa.array(cap, pa.float64())}


def grade_all(reward: Any, pairs: list[tuple[str, str]]) -> list[tuple[float, str | None, str | None]]:
    """(score, extracted answer, failure kind) per (completion, reference): from the
    reward's `grade_many` when it has one (`thresher.models.rewards`' `Grade`s), else its
    plain float (a user reward written as a function extracts nothing and never fails)."""
    many = getattr(reward, "grade_many", None)
    if many is not None:
        return [(float(g.score), g.extracted, g.failure) for g in many(pairs)]
    return [(float(reward(c, r)), None, None) for c, r in pairs]


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
            last_number=p.last_number_fallback, store_path=self.store_path(), max_calls_per_run=p.max_calls_per_run,
            reward_timeout_s=p.reward_timeout_s)

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
        # Beside the snapshots, not in one: every snapshot's run reads the same store. The
        # stage is built before its run's snapshot exists, so `out_dir` is the output folder
        # here; rollouts are kept even with the row cache off (`cache.enabled: false`).
        if not self.ctx.cache_dir and fs.is_remote(self.ctx.out_dir):  # SQLite needs a local disk
            return os.path.join(fs.local_cache_dir(self.ctx.out_dir), "rollouts.sqlite")
        return os.path.join(self.ctx.cache_dir or os.path.join(self.ctx.out_dir, "cache"), "rollouts.sqlite")

    def check(self) -> list[str]:
        out = check_policy(self.params.policy) if self.uses_model else []
        bad = check_reward(self.params.reward) if self.uses_reward else None
        if bad:
            out.append(f"params.reward: {bad}")
        return out

    def setup(self) -> None:
        self.session.open(with_policy=self.uses_model)

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        names = batch.schema.names
        fails: Counter = Counter()
        for s in batch.column(FAILURES).to_pylist():
            fails.update(json.loads(s))
        out = {
            "rows": batch.num_rows,
            "model_calls": int(np.sum(batch.column(CALLS).to_numpy())),
            "cache_hits": int(np.sum(batch.column(CACHE_HITS).to_numpy())),
            "failures_by_kind": dict(fails),
        }
        if REWARD_FAILURES in names:
            rfails: Counter = Counter()
            for s in batch.column(REWARD_FAILURES).to_pylist():
                rfails.update(json.loads(s))
            out["reward_failures_by_kind"] = dict(rfails)
        if SLOT_BUSY in names:
            out["slot_busy_s"] = float(np.sum(batch.column(SLOT_BUSY).to_numpy()))
            out["slot_capacity_s"] = float(np.sum(batch.column(SLOT_CAPACITY).to_numpy()))
        return out

    def report(self, summary: dict[str, Any], selected: Any = None) -> dict[str, Any]:
        out = dict(summary)
        for key, empty in (("rows", 0), ("model_calls", 0), ("cache_hits", 0), ("failures_by_kind", {}),
                           ("reward_failures_by_kind", {})):
            out.setdefault(key, empty)
        busy, cap = out.pop("slot_busy_s", 0.0), out.pop("slot_capacity_s", 0.0)
        if self.uses_model:
            # Mean requests in flight / max_concurrency while this stage's batches were
            # talking to the model; null when the backend does not measure it.
            out["slot_occupancy"] = round(busy / cap, 4) if cap > 0 else None
        if self.uses_model:
            # What produced the numbers — never the API key (params hold only the variable's name).
            pol = self.params.policy
            out["policy"] = {"backend": pol.backend, "model": pol.model, "api": pol.api,
                             "base_url": pol.base_url if pol.backend == "openai" else None}
            out["sampling"] = self.params.sampling.model_dump()
        return out
