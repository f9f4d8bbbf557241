"""The step-level Monte-Carlo tree search behind `mcts_difficulty` (plain Python: tested
directly, driven batch by batch by the stage).

A node is one reasoning step (generation stops at `step_delimiter`). Each iteration selects a
leaf by UCT (Q/N + c·sqrt(ln N_parent / N), unvisited children first), expands it with
`children` sampled next steps, judges children that state a final answer against the
reference, and rolls out from the first new open child (one call that continues to the end;
only its first `rollout_max_steps` steps count). Rewards are backed up to the root. A tree's
`solved_at` is the iteration at which a correct answer first appeared. `Search.run` advances
many trees together, one iteration at a time, so each phase's model calls (expansions, then
rollouts) go out as one batch of requests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from thresher.models.policy import BUDGET, Generation, Request
from thresher.models.rewards import has_explicit_answer

SOLVED, UNSOLVED = "solved", "unsolved"


class SearchSettings(Protocol):
    """The search's knobs (`MctsParams` has them all, with their meaning)."""

    max_iterations: int
    children: int
    c_uct: float
    rollout_max_steps: int
    max_depth: int
    step_delimiter: str
    step_max_tokens: int
    solved_reward: float
    max_calls_per_problem: int | None
    max_failed_iterations: int


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
    failures: Counter = field(default_factory=Counter)  # failed requests by kind

    @property
    def done(self) -> bool:
        return self.status is not None


class Search:
    """Advances many trees together; `generate(requests) -> generations` is the policy."""

    def __init__(self, p: SearchSettings, reward: Callable[[str, str], float],
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
        """Search every tree not done yet until each is solved, unsolved after
        `max_iterations`, out of budget, or failing; sets `status` on each."""
        active = [t for t in trees if not t.done]
        while active:
            rollouts = self._expand(self._select_leaves(active))
            self._roll_out(rollouts)
            for t in active:
                if t.solved_at is not None and not t.done:
                    t.status = SOLVED
            active = [t for t in active if not t.done]
        return trees

    def _select_leaves(self, active: list[Tree]) -> list[tuple[Tree, Node]]:
        """Phase 1, selection: the leaf each tree expands this iteration (a final leaf is
        re-scored without a call); trees out of iterations or budget end here."""
        p = self.p
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
        return expand

    def _expand(self, expand: list[tuple[Tree, Node]]) -> list[tuple[Tree, Node]]:
        """Phase 2, expansion: `children` next steps per leaf, one batch of requests over all
        trees; children that state an answer are judged. -> (tree, open child) to roll out."""
        p = self.p
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
        return rollouts

    def _roll_out(self, rollouts: list[tuple[Tree, Node]]) -> None:
        """Phase 3, rollouts: one batch of requests, each continuing to the end of a solution;
        the reward is backed up from the open child it started at."""
        p = self.p
        reqs = [Request(t.problem, sample=f"{c.path}/rollout", prefix=self.prefix(c)) for t, c in rollouts]
        gens = self.generate(reqs) if reqs else []
        for (t, c), g in zip(rollouts, gens, strict=True):
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


def new_tree(problem: str, reference: str) -> Tree:
    return Tree(problem, reference, Node("", None, "r", 0))
