"""`mcts_difficulty`: how many tree-search iterations a policy needs to solve a problem.

Step-level Monte-Carlo tree search as in ThinkLite-VL (Wang et al. 2025): a node is one
reasoning step (generation stops at `step_delimiter`); each iteration selects a leaf by UCT
(Q/N + c·sqrt(ln N_parent / N), unvisited children first), expands it with `children` (3)
sampled next steps, judges children that state a final answer against the reference, and
rolls out from the first new open child for up to `rollout_max_steps` (10) further steps.
Rewards are backed up to the root. Difficulty = the iteration at which a correct answer first
appeared; a problem not solved in `max_iterations` (50) is recorded as unsolved (never
dropped silently). All trees of a batch advance one iteration at a time together, so each
phase's model calls (expansions, then rollouts) go out as one concurrent batch.

In:  rows whose `text` is the problem and `answer_field` the reference answer.
Out: rows with `mcts_difficulty` (int, null unless solved), `mcts_solved` (bool, null when
     the search could not run), `mcts_status` (`solved`, `unsolved`, `budget_exhausted`, or a
     failure kind), `mcts_iterations`, `mcts_calls` (requests, cached or not) and, with
     `write_rollouts`, `mcts_solution` (the first correct path). Kept: solved with difficulty
     > `min_difficulty` (default 5) and unsolved rows (`keep_unsolved`); dropped with reason
     `too_easy`, `unsolved` or `unscored`.
Cost: per problem at most `children` + 1 model calls per iteration (fewer once leaves are
     final answers), capped by `max_calls_per_problem`; easy problems stop at their first
     solve. A rollout is one call that continues to the end of the solution; only its first
     `rollout_max_steps` steps count. (Sampling a continuation in one call has the same
     distribution as stopping at each delimiter and asking again, at a tenth of the calls.)
Stats (report): difficulty histogram, status counts, model calls, cache hits, failures by kind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core.stage import BatchFn, MapBatches
from thresher.core import rows
from thresher.core.selector import ApplyDecisions, RowSelector, with_decisions
from thresher.models.session import (
    ModelSelectorParams, ModelSession, SumSummaries, answers_of, append_columns, check_model_params,
    model_stats, stat_columns, strip_stats, with_policy_facts,
)
from thresher.models.policy import BUDGET, Generation, Request
from thresher.models.rewards import has_explicit_answer

SOLVED, UNSOLVED = "solved", "unsolved"


class MctsParams(ModelSelectorParams):
    max_iterations: int = Field(50, gt=0, le=10_000, description="Iterations per problem.")
    children: int = Field(3, gt=0, le=32, description="Children sampled per expansion.")
    c_uct: float = Field(1.0, ge=0, description="UCT exploration constant.")
    rollout_max_steps: int = Field(10, gt=0, description="Steps a rollout may take to reach an answer.")
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


# ---------------------------------------------------------------------------------------
# The search (plain Python: tested directly, run by the BatchFn)


@dataclass
class Node:
    step: str
    parent: Node | None
    path: str  # position in the tree ("r", "r.0", "r.0.2"): the sample key of its requests
    depth: int
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    final: bool = False
    reward: float = 0.0

    def steps(self) -> list[str]:
        out, n = [], self
        while n.parent is not None:
            out.append(n.step)
            n = n.parent
        return out[::-1]


@dataclass
class Tree:
    problem: str
    reference: str
    root: Node
    iteration: int = 0
    requests: int = 0
    solved_at: int | None = None
    solution: str | None = None
    status: str | None = None  # set when the search ends
    failed_streak: int = 0
    failures: Counter = field(default_factory=Counter)
    leaf: Node | None = None  # selected this iteration, awaiting expansion

    @property
    def done(self) -> bool:
        return self.status is not None


class Search:
    """Advances many trees together; `generate(requests) -> generations` is the policy."""

    def __init__(self, p: MctsParams, reward: Callable[[str, str], float],
                 generate: Callable[[list[Request]], list[Generation]]):
        self.p = p
        self.reward = reward
        self.generate = generate

    def text_of(self, steps: list[str]) -> str:
        return self.p.step_delimiter.join(steps)

    def prefix(self, node: Node) -> str:
        return "".join(s + self.p.step_delimiter for s in node.steps())

    def select(self, t: Tree) -> Node:
        node = t.root
        while node.children:
            best, best_u = node.children[0], -math.inf
            for c in node.children:
                if c.visits == 0:
                    best = c
                    break
                u = c.value / c.visits + self.p.c_uct * math.sqrt(math.log(max(node.visits, 1)) / c.visits)
                if u > best_u:
                    best, best_u = c, u
            node = best
        return node

    @staticmethod
    def backup(node: Node | None, reward: float) -> None:
        while node is not None:
            node.visits += 1
            node.value += reward
            node = node.parent

    def _judge(self, t: Tree, steps: list[str]) -> float:
        return float(self.reward(self.text_of(steps), t.reference))

    def _solve(self, t: Tree, reward: float, steps: list[str]) -> None:
        if reward >= self.p.solved_reward and t.solved_at is None:
            t.solved_at = t.iteration
            t.solution = self.text_of(steps)

    def run(self, trees: list[Tree]) -> list[Tree]:
        p = self.p
        active = [t for t in trees if not t.done]
        while active:
            # 1. selection (a final leaf is re-scored without a call)
            expand: list[tuple[Tree, Node]] = []
            for t in active:
                if t.iteration >= p.max_iterations:
                    t.status = UNSOLVED
                    continue
                if p.max_calls_per_problem is not None and t.requests + p.children + 1 > p.max_calls_per_problem:
                    t.status = BUDGET
                    continue
                t.iteration += 1
                leaf = self.select(t)
                if leaf.final:
                    self.backup(leaf, leaf.reward)
                    continue
                expand.append((t, leaf))
            # 2. expansion: one concurrent batch of requests over all trees
            reqs = [Request(t.problem, sample=f"{leaf.path}/c{i}", prefix=self.prefix(leaf),
                            stop=(p.step_delimiter,), max_tokens=p.step_max_tokens)
                    for t, leaf in expand for i in range(p.children)]
            gens = self.generate(reqs) if reqs else []
            rollouts: list[tuple[Tree, Node]] = []
            for j, (t, leaf) in enumerate(expand):
                mine = gens[j * p.children:(j + 1) * p.children]
                t.requests += len(mine)
                ok = [g for g in mine if g.text is not None]
                for g in mine:
                    if g.text is None:
                        t.failures[g.error] += 1
                if not ok:
                    t.failed_streak += 1
                    if t.failed_streak >= p.max_failed_iterations or all(g.error == BUDGET for g in mine):
                        t.status = Counter(g.error for g in mine).most_common(1)[0][0]
                    continue
                t.failed_streak = 0
                for i, g in enumerate(ok):
                    step = g.text.strip()
                    child = Node(step, leaf, f"{leaf.path}.{i}", leaf.depth + 1)
                    leaf.children.append(child)
                    # Final: the step states an answer, the model had nothing more to say
                    # (an empty step), or the tree is as deep as allowed.
                    if not step or has_explicit_answer(step) or child.depth >= p.max_depth:
                        child.final = True
                        steps = [s for s in child.steps() if s]
                        child.reward = self._judge(t, steps)
                        self.backup(child, child.reward)
                        self._solve(t, child.reward, steps)
                open_children = [c for c in leaf.children if not c.final]
                if open_children and t.solved_at is None:
                    rollouts.append((t, open_children[0]))
            # 3. rollouts: one batch
            reqs = [Request(t.problem, sample=f"{c.path}/rollout", prefix=self.prefix(c)) for t, c in rollouts]
            gens = self.generate(reqs) if reqs else []
            for (t, c), g in zip(rollouts, gens):
                t.requests += 1
                if g.text is None:
                    t.failures[g.error] += 1
                    continue
                parts = [s.strip() for s in g.text.split(p.step_delimiter) if s.strip()]
                within = parts[: p.rollout_max_steps]
                cut = len(parts) > p.rollout_max_steps or g.finish_reason == "length"
                if cut and not any(has_explicit_answer(s) for s in within):
                    r = 0.0  # never reached an answer within its step allowance
                else:
                    if cut:  # stop at the step that states the answer
                        k = next(i for i, s in enumerate(within) if has_explicit_answer(s))
                        within = within[: k + 1]
                    steps = c.steps() + within
                    r = self._judge(t, steps)
                    self._solve(t, r, steps)
                self.backup(c, r)
            for t in active:
                if t.solved_at is not None and not t.done:
                    t.status = SOLVED
            active = [t for t in active if not t.done]
        return trees


def new_tree(problem: str, reference: str) -> Tree:
    return Tree(problem, reference, Node("", None, "r", 0))


# ---------------------------------------------------------------------------------------
# Beam stage


class _ScoreMcts(BatchFn):
    def __init__(self, params: MctsParams, session: ModelSession):
        self.p = params
        self.s = session

    def setup(self) -> None:
        self.s.open()

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        problems = batch.column(rows.TEXT).to_pylist()
        refs = answers_of(batch, self.p.answer_field)
        trees = [new_tree(q, r if r is not None else "") for q, r in zip(problems, refs)]
        for t, r in zip(trees, refs):
            if r is None:
                t.status = "no_reference"
        calls: Counter = Counter()
        hits: Counter = Counter()
        row_of = {q: i for i, q in reversed(list(enumerate(problems)))}

        def counted(reqs: list[Request]) -> list[Generation]:
            # Credit each request to its row, for the per-row call/cache-hit counts.
            gens = self.s.generate(reqs)
            for r, g in zip(reqs, gens):
                if g.cached:
                    hits[row_of[r.problem]] += 1
                elif g.error != BUDGET:
                    calls[row_of[r.problem]] += 1
            return gens

        before = self.s.stats_snapshot()
        Search(self.p, self.s.reward, counted).run(trees)
        self.s.count(before)
        n = batch.num_rows
        solved = [t.solved_at is not None for t in trees]
        cols = {
            "mcts_difficulty": pa.array([t.solved_at for t in trees], pa.int32()),
            "mcts_solved": pa.array([True if s else (False if t.status == UNSOLVED else None)
                                     for s, t in zip(solved, trees)], pa.bool_()),
            "mcts_status": pa.array([t.status for t in trees], pa.string()),
            "mcts_iterations": pa.array([t.iteration for t in trees], pa.int32()),
            "mcts_calls": pa.array([t.requests for t in trees], pa.int32()),
        }
        if self.p.write_rollouts:
            cols["mcts_solution"] = pa.array([t.solution for t in trees], pa.string())
        cols.update(stat_columns([calls[i] for i in range(n)], [hits[i] for i in range(n)],
                                 [t.failures for t in trees]))
        return append_columns(batch, cols)


class _DecideMcts(BatchFn):
    def __init__(self, params: MctsParams):
        self.p = params

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        status = batch.column("mcts_status").to_pylist()
        diff = batch.column("mcts_difficulty").to_pylist()
        keep = np.ones(batch.num_rows, bool)
        reason: list[str | None] = [None] * batch.num_rows
        for i, (s, d) in enumerate(zip(status, diff)):
            if s == SOLVED and d <= self.p.min_difficulty:
                keep[i], reason[i] = False, "too_easy"
            elif s == UNSOLVED and not self.p.keep_unsolved:
                keep[i], reason[i] = False, "unsolved"
            elif s not in (SOLVED, UNSOLVED) and self.p.on_unscored == "drop":
                keep[i], reason[i] = False, "unscored"
        return with_decisions(strip_stats(batch), keep, reason)


def _summarise(batch: pa.RecordBatch) -> dict[str, Any]:
    out = model_stats(batch)
    status = batch.column("mcts_status").to_pylist()
    diff = batch.column("mcts_difficulty").to_pylist()
    hist: Counter = Counter()
    for s, d in zip(status, diff):
        hist[str(d) if s == SOLVED else s] += 1
    out["difficulty_histogram"] = dict(hist)
    out["status"] = dict(Counter(status))
    out["iterations"] = int(np.sum(batch.column("mcts_iterations").to_numpy()))
    out["requests"] = int(np.sum(batch.column("mcts_calls").to_numpy()))
    return out


def _finish(acc: dict[str, Any]) -> dict[str, Any]:
    acc = dict(acc)
    for k, v in (("rows", 0), ("model_calls", 0), ("cache_hits", 0), ("failures_by_kind", {}),
                 ("difficulty_histogram", {}), ("status", {})):
        acc.setdefault(k, v)
    # Histogram keys in reading order: 1, 2, ..., then the unsolved/failed statuses.
    h = acc["difficulty_histogram"]
    acc["difficulty_histogram"] = dict(sorted(h.items(), key=lambda kv: (not kv[0].isdigit(),
                                                                        int(kv[0]) if kv[0].isdigit() else 0, kv[0])))
    return acc


class MctsDifficulty(RowSelector):
    __doc__ = __doc__
    type_name = "mcts_difficulty"
    Params = MctsParams
    cost = "model: up to (children+1) x max_iterations calls per problem (cached on disk)"

    @classmethod
    def check(cls, params: MctsParams, recipe: Any) -> list[str]:
        return check_model_params(params, recipe)

    def make_fn(self) -> BatchFn:
        return _ScoreMcts(self.params, ModelSession(self.params, self.ctx, self.ctx.name))

    def expand(self, batches):
        name = self.ctx.name
        scored = batches | MapBatches(self.make_fn(), name, label=f"{name}/Score")
        report = (scored | f"{name}/Summarise" >> beam.CombineGlobally(SumSummaries(_summarise, _finish))
                  | f"{name}/AddPolicy" >> beam.Map(with_policy_facts, self.params))
        self.ctx.write_report(report)
        decided = scored | MapBatches(_DecideMcts(self.params), name, label=f"{name}/Decide")
        return decided | ApplyDecisions(self)
