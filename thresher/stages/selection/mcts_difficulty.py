"""`mcts_difficulty`: how many tree-search iterations a policy needs to solve a problem.

Step-level Monte-Carlo tree search as in ThinkLite-VL (Wang et al. 2025): a node is one
reasoning step (generation stops at `step_delimiter`); each iteration selects a leaf by UCT
(Q/N + c·sqrt(ln N_parent / N), unvisited children first), expands it with `children` (3)
sampled next steps, judges children that state a final answer against the reference, and
rolls out from the first new open child (`rollouts_per_leaf` times, default 1) for up to
`rollout_max_steps` (10) further steps. Rewards are backed up to the root. Difficulty = the
iteration at which a correct answer first appeared; a problem not solved in `max_iterations`
(50) is recorded as unsolved (never dropped silently). The trees of a batch are searched
together: as soon as one tree's calls are all answered its next calls are submitted, so the
server keeps `policy.max_concurrency` requests in flight instead of waiting for the slowest
tree of a round; each tree applies its own results in request order, so the result does not
depend on which response came first. The search itself is `mcts_search.py`; this module is
the stage around it.

In:  rows whose `text` is the problem and `answer_field` the reference answer.
Out: rows with `mcts_difficulty` (int, null unless solved), `mcts_solved` (bool, null when
     the search could not run), `mcts_status` (`solved`, `unsolved`, `budget_exhausted`,
     `no_reference`, or a failure kind), `mcts_iterations`, `mcts_calls` (requests, cached or not) and, with
     `write_rollouts`, `mcts_solution` (the first correct path). Kept: solved with difficulty
     > `min_difficulty` (default 5) and unsolved rows (`keep_unsolved`); dropped with reason
     `too_easy`, `unsolved` or `unscored`.
Cost: per problem at most `children` + `rollouts_per_leaf` model calls per iteration (fewer
     once leaves are final answers), capped by `max_calls_per_problem`; easy problems stop at
     their first solve. A rollout is one call that continues to the end of the solution; only its first
     `rollout_max_steps` steps count. (Sampling a continuation in one call has the same
     distribution as stopping at each delimiter and asking again, at a tenth of the calls.)
Stats (report): difficulty histogram, status counts, model calls, cache hits, failures by kind,
     `slot_occupancy` (mean requests in flight / `max_concurrency` while searching).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import rows
from thresher.models.policy import Request
from thresher.stages.selection.mcts_search import SOLVED, UNSOLVED, Search, new_tree
from thresher.stages.selection.model_selector import (
    CallTally,
    ModelSelector,
    ModelSelectorParams,
    SlotTimer,
    answers_of,
)


class MctsParams(ModelSelectorParams):
    max_iterations: int = Field(50, gt=0, le=10_000, description="Iterations per problem.")
    children: int = Field(3, gt=0, le=32, description="Children sampled per expansion.")
    c_uct: float = Field(1.0, ge=0, description="UCT exploration constant.")
    rollout_max_steps: int = Field(10, gt=0, description="Steps a rollout may take to reach an answer.")
    rollouts_per_leaf: int = Field(1, gt=0, le=64, description="Rollouts from each expanded leaf's "
                                   "first open child (one call each; every reward is backed up).")
    max_depth: int = Field(20, gt=0, description="Steps in the tree before a node counts as final.")
    step_delimiter: str = Field("\n\n", description="Text that ends one reasoning step.")
    step_max_tokens: int = Field(128, gt=0, description="Most tokens in one step.")
    solved_reward: float = Field(1.0, gt=0, le=1, description="A reward at least this counts as solved.")
    max_calls_per_problem: int | None = Field(None, gt=0, description="Most model requests (cached "
                                              "or not) one problem's search may make; then "
                                              "`budget_exhausted`.")
    max_failed_iterations: int = Field(3, gt=0, description="Give a tree up (status = the failure "
                                       "kind) after this many iterations in a row where every call failed.")
    min_difficulty: int = Field(5, ge=0, description="Keep solved rows with difficulty above this.")
    keep_unsolved: bool = Field(True, description="Keep rows not solved within max_iterations.")


class MctsDifficulty(ModelSelector):
    __doc__ = __doc__
    type_name = "mcts_difficulty"
    Params = MctsParams
    cost = "model: up to (children+1) x max_iterations calls per problem (cached on disk)"

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        p = self.params
        problems = batch.column(rows.TEXT).to_pylist()
        refs = answers_of(batch, p.answer_field)
        trees = [new_tree(q, r if r is not None else "") for q, r in zip(problems, refs, strict=True)]
        for t, r in zip(trees, refs, strict=True):
            if r is None:
                t.status = "no_reference"
        tally = CallTally(batch.num_rows)
        # Requests name their problem, not their row: a problem that occurs twice in a batch is
        # tallied to its first row (the report adds the rows up, so totals are exact).
        row_of = {q: i for i, q in reversed(list(enumerate(problems)))}

        def submit(reqs: list[Request]) -> list[Future]:
            futs = self.session.submit(reqs)
            for r, f in zip(reqs, futs, strict=True):
                f.add_done_callback(lambda f, row=row_of[r.problem]: tally.add(row, f.result()))
            return futs

        search = Search(p, self.session.reward, submit=submit, flush=self.session.flush)
        with self.session.counting(), SlotTimer(self.session) as slots:
            search.run(trees)
        cols = {
            "mcts_difficulty": pa.array([t.solved_at for t in trees], pa.int32()),
            "mcts_solved": pa.array([True if t.solved_at is not None else (False if t.status == UNSOLVED else None)
                                     for t in trees], pa.bool_()),
            "mcts_status": pa.array([t.status for t in trees], pa.string()),
            "mcts_iterations": pa.array([t.iteration for t in trees], pa.int32()),
            "mcts_calls": pa.array([t.requests for t in trees], pa.int32()),
        }
        if p.write_rollouts:
            cols["mcts_solution"] = pa.array([t.solution for t in trees], pa.string())
        return {**cols, **tally.columns(), **slots.columns(batch.num_rows)}

    def decide(self, batch: pa.RecordBatch):
        p = self.params
        status = batch.column("mcts_status").to_pylist()
        diff = batch.column("mcts_difficulty").to_pylist()
        keep = np.ones(batch.num_rows, bool)
        reason: list[str | None] = [None] * batch.num_rows
        for i, (s, d) in enumerate(zip(status, diff, strict=True)):
            if s == SOLVED and d <= p.min_difficulty:
                keep[i], reason[i] = False, "too_easy"
            elif s == UNSOLVED and not p.keep_unsolved:
                keep[i], reason[i] = False, "unsolved"
            elif s not in (SOLVED, UNSOLVED) and p.on_unscored == "drop":
                keep[i], reason[i] = False, "unscored"
        return keep, reason

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        out = super().summarise(batch, keep)
        status = batch.column("mcts_status").to_pylist()
        diff = batch.column("mcts_difficulty").to_pylist()
        hist: Counter = Counter()
        for s, d in zip(status, diff, strict=True):
            hist[str(d) if s == SOLVED else s] += 1
        out["difficulty_histogram"] = dict(hist)
        out["status"] = dict(Counter(status))
        out["iterations"] = int(np.sum(batch.column("mcts_iterations").to_numpy()))
        out["requests"] = int(np.sum(batch.column("mcts_calls").to_numpy()))
        return out

    def report(self, summary: dict[str, Any], selected: Any = None) -> dict[str, Any]:
        out = super().report(summary)
        # Histogram keys in reading order: 1, 2, ..., then the unsolved/failed statuses.
        h = out.setdefault("difficulty_histogram", {})
        out.setdefault("status", {})
        out["difficulty_histogram"] = dict(sorted(h.items(), key=lambda kv: (
            not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0])))
        return out
