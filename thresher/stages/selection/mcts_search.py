"""The step-level Monte-Carlo tree search behind `mcts_difficulty` (plain Python: tested
directly, driven batch by batch by the stage).

A node is one reasoning step (generation stops at `step_delimiter`). Each iteration selects a
leaf by UCT (Q/N + c·sqrt(ln N_parent / N), unvisited children first), expands it with
`children` sampled next steps, judges children that state a final answer against the
reference, and rolls out from the first new open child (`rollouts_per_leaf` calls that each
continue to the end; only the first `rollout_max_steps` steps count). Rewards are backed up to
the root. A tree's `solved_at` is the iteration at which a correct answer first appeared.

`Search.run` searches many trees at once: each tree is a coroutine that yields its next
phase's requests (an expansion, then its rollouts), and is resumed as soon as all of them
are answered, so a policy with `max_concurrency` slots is kept busy by whichever trees are
ready instead of waiting for the slowest tree of a lock-step round.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from queue import Empty, SimpleQueue
from typing import Protocol

from thresher.models.policy import BACKEND, BUDGET, Generation, Request
from thresher.models.rewards import has_explicit_answer

SOLVED, UNSOLVED = "solved", "unsolved"


class SearchSettings(Protocol):
    """The search's knobs (`MctsParams` has them all, with their meaning)."""

    max_iterations: int
    children: int
    c_uct: float
    rollout_max_steps: int
    rollouts_per_leaf: int
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
    """Advances many trees together. The policy is `submit(requests) -> futures` (see
    `ModelSession.submit`) or, for tests and batch-only backends, `generate(requests) ->
    generations`; `flush(force)` (optional) stores what arrived: unforced after each round
    (the store may wait for a whole chunk), forced at the end."""

    def __init__(self, p: SearchSettings, reward: Callable[[str, str], float],
                 generate: Callable[[list[Request]], list[Generation]] | None = None, *,
                 submit: Callable[[list[Request]], list[Future]] | None = None,
                 flush: Callable[[bool], None] | None = None):
        if (generate is None) == (submit is None):
            raise TypeError("Search needs one of generate= or submit=")
        self.p = p
        self.reward = reward
        self.submit = submit or (lambda reqs: [_done(g) for g in generate(reqs)])
        self.flush = flush or (lambda force: None)
        self.rounds = 0

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
        `max_iterations`, out of budget, or failing; sets `status` on each.

        Each tree is a coroutine (`_search`) that yields the requests of its next phase. A
        tree whose requests have all come back is resumed at once and its next requests are
        submitted, so the server never waits for the slowest tree of a round. Trees share no
        state, and each applies its own results in request order, so the outcome does not
        depend on completion order (only a shared run budget is first come, first served).
        Trees resumed in the same round are resumed in problem order, and their requests go
        out together in one submit."""
        ready: SimpleQueue[int] = SimpleQueue()  # trees whose requests are all answered
        coros = {i: self._search(t) for i, t in enumerate(trees) if not t.done}
        waiting: dict[int, list[Future]] = {}
        answers: dict[int, list[Generation] | None] = dict.fromkeys(coros)
        while coros:
            batch: list[tuple[int, list[Request]]] = []
            for i in sorted(answers):
                try:
                    got = answers.pop(i)
                    reqs = coros[i].send(got)
                except StopIteration:
                    del coros[i]
                    continue
                batch.append((i, reqs))
            answers.clear()
            if batch:
                self.rounds += 1
                futs = self.submit([r for _, reqs in batch for r in reqs])
                k = 0
                for i, reqs in batch:
                    waiting[i] = mine = futs[k:k + len(reqs)]
                    k += len(reqs)
                    _when_all(mine, partial(ready.put, i))
            self.flush(False)
            if not coros:
                break
            first = ready.get()  # block until some tree's phase is complete
            for i in [first, *_drain(ready)]:
                answers[i] = [_result(f) for f in waiting.pop(i)]
        self.flush(True)
        return trees

    def _search(self, t: Tree) -> Generator[list[Request], list[Generation], None]:
        """One tree's search: yields each phase's requests, receives their generations."""
        while not t.done:
            leaf = self._select_leaf(t)
            if leaf is None:
                continue  # a final leaf was re-scored without a call, or the search ended
            reqs = self._expansion(t, leaf)
            gens = yield reqs
            child = self._expand(t, leaf, gens)
            if child is not None:
                gens = yield self._rollouts(t, child)
                self._roll_out(t, child, gens)
            if t.solved_at is not None and not t.done:
                t.status = SOLVED
                return

    def _select_leaf(self, t: Tree) -> Node | None:
        """Selection: the leaf this iteration expands (None: a final leaf, re-scored without
        a call); a tree out of iterations or budget ends here."""
        p = self.p
        if t.iteration >= p.max_iterations:
            t.status = UNSOLVED
            return None
        if p.max_calls_per_problem is not None and t.requests + p.children + p.rollouts_per_leaf > \
                p.max_calls_per_problem:
            t.status = BUDGET
            return None
        t.iteration += 1
        leaf = self.select(t)
        if leaf.final:
            self.backup(leaf, leaf.reward)
            return None
        return leaf

    def _expansion(self, t: Tree, leaf: Node) -> list[Request]:
        p = self.p
        return [Request(t.problem, sample=f"{leaf.path}/c{i}", prefix=self.prefix(leaf),
                        stop=(p.step_delimiter,), max_tokens=p.step_max_tokens) for i in range(p.children)]

    def _expand(self, t: Tree, leaf: Node, gens: list[Generation]) -> Node | None:
        """Expansion: `children` next steps; children that state an answer are judged.
        -> the open child to roll out from, or None."""
        p = self.p
        t.requests += len(gens)
        ok = [g for g in gens if g.text is not None]
        for g in gens:
            if g.text is None:
                t.failures[g.error] += 1
        if not ok:
            t.failed_streak += 1
            if t.failed_streak >= p.max_failed_iterations or all(g.error == BUDGET for g in gens):
                t.status = Counter(g.error for g in gens).most_common(1)[0][0]
            return None
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
        return open_children[0] if open_children and t.solved_at is None else None

    def _rollouts(self, t: Tree, c: Node) -> list[Request]:
        # The first rollout keeps the sample key of the one-rollout search: its cache entries
        # stay valid when `rollouts_per_leaf` is raised.
        return [Request(t.problem, sample=f"{c.path}/rollout" + (f"{j}" if j else ""), prefix=self.prefix(c))
                for j in range(self.p.rollouts_per_leaf)]

    def _roll_out(self, t: Tree, c: Node, gens: list[Generation]) -> None:
        """Rollouts: each continues to the end of a solution; each reward is backed up from
        the open child it started at."""
        p = self.p
        for g in gens:
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


def _done(g: Generation) -> Future:
    f: Future = Future()
    f.set_result(g)
    return f


def _result(f: Future) -> Generation:
    try:
        return f.result()
    except Exception:  # a backend's bug fails the request, not the search
        return Generation(None, None, BACKEND)


def _when_all(futs: list[Future], then: Callable[[], None]) -> None:
    """Call `then()` once every future in `futs` is done (at once when all already are)."""
    left = [len(futs)]
    lock = threading.Lock()

    def one(_f: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    if not futs:
        then()
    for f in futs:
        f.add_done_callback(one)


def _drain(q: SimpleQueue) -> list[int]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except Empty:
            return out


def new_tree(problem: str, reference: str) -> Tree:
    return Tree(problem, reference, Node("", None, "r", 0))
