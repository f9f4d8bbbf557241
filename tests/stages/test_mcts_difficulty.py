"""`mcts_difficulty`: the tree search against a scripted policy of known success probability
(plain Python, no pipeline), the stage's `score`/`decide` called directly, one real Beam
pipeline through `run_stage`, and — marked slow — whole recipes with the scripted backend and a
real rollout store (resume from the cache, a run budget)."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.core.context import StageContext
from thresher.models.cached_policy import CachedPolicy
from thresher.models.policy import SamplingParams
from thresher.models.rewards import make_reward
from thresher.stages.selection.mcts_difficulty import MctsDifficulty, MctsParams
from thresher.stages.selection.mcts_search import Search, new_tree
from thresher.stages.selection.model_selector import CACHE_HITS, CALLS
from thresher.testing.harness import make_batch, run_stage
from thresher.testing.scripted import ScriptedPolicy, bernoulli_script

# `normalized` judges the script's integer answers as `math` does, without loading sympy.
SCRIPTED = {"policy": {"backend": "scripted"}, "reward": "normalized"}


# ---------------------------------------------------------------------------------------
# The search


PS = [1.0, 0.5, 0.2, 0.05, 0.0]


def _search(trees, seed, **kw):
    """Run the search with the scripted policy and no store; `normalized` rewards the
    script's integer answers exactly as `math` would, without math-verify's cost."""
    policy = ScriptedPolicy(bernoulli_script)
    cp = CachedPolicy(policy, None, SamplingParams(), seed)
    Search(MctsParams(**kw), make_reward("normalized"), cp.generate).run(trees)
    return policy


def test_difficulty_orders_problems_by_success_probability():
    diffs = {p: [] for p in PS}
    for seed in range(12):
        trees = [new_tree(f"Problem {i}: p={p} answer=42 steps=2", "42") for i, p in enumerate(PS)]
        _search(trees, seed)
        for p, t in zip(PS, trees, strict=True):
            # unsolved counts as one past the last iteration
            diffs[p].append(t.solved_at if t.solved_at is not None else 51)
            if p == 1.0:
                assert t.solved_at == 1 and t.status == "solved" and t.iteration == 1
                assert t.requests == 4  # 3 children + 1 rollout
            if p == 0.0:
                assert t.status == "unsolved" and t.solved_at is None and t.iteration == 50
    means = [float(np.mean(diffs[p])) for p in PS]
    print("mean difficulty by p:", dict(zip(PS, means, strict=True)))
    assert means == sorted(means) and len(set(means)) == len(means), means
    assert means[0] == 1.0 and means[-1] == 51.0


@pytest.mark.parametrize("steps", [1, 2])
def test_unsolvable_problem_exact_call_count(steps):
    # The tree is finite: every node at depth <= steps is expanded once (3 calls), and every
    # expansion with open children is followed by one rollout. After that, iterations only
    # re-score final leaves, without calls.
    t = new_tree(f"p=0 answer=42 steps={steps}", "42")
    policy = _search([t], seed=0)
    expanded = sum(3**d for d in range(steps + 1))
    rollouts = sum(3**d for d in range(steps))
    assert t.status == "unsolved" and t.iteration == 50
    assert t.requests == policy.calls == 3 * expanded + rollouts  # 13 and 43


def test_never_answering_policy_costs_four_calls_per_iteration():
    t = new_tree("p=0 answer=42 steps=1000", "42")
    policy = _search([t], seed=0)
    assert (t.status, t.iteration, t.requests, policy.calls) == ("unsolved", 50, 200, 200)


def test_per_problem_budget_stops_search_and_says_so():
    t = new_tree("p=0 answer=42 steps=1000", "42")
    policy = _search([t], seed=0, max_calls_per_problem=10)
    assert (t.status, t.iteration, t.requests, policy.calls) == ("budget_exhausted", 2, 8, 8)


def test_search_gives_up_after_failing_iterations_with_the_failure_kind():
    def failing(req, seed):
        raise TimeoutError("no answer")

    t = new_tree("p=1 answer=42", "42")
    cp = CachedPolicy(ScriptedPolicy(failing), None, SamplingParams(), 0)
    Search(MctsParams(max_failed_iterations=2), make_reward("normalized"), cp.generate).run([t])
    assert (t.status, t.iteration, t.requests) == ("backend_error", 2, 6)
    assert t.failures == {"backend_error": 6} and t.solved_at is None


class ShuffledPolicy(ScriptedPolicy):
    """The scripted policy answering from worker threads, each request after a random few
    milliseconds: responses come back in an order unrelated to the order of requests."""

    def __init__(self, seed: int):
        super().__init__(bernoulli_script)
        self.rng = random.Random(seed)
        self.pool = ThreadPoolExecutor(8)

    def submit(self, requests, sampling, seed):
        def one(r, pause):
            time.sleep(pause)
            return self.generate([r], sampling, seed)[0]

        return [self.pool.submit(one, r, self.rng.random() * 0.003) for r in requests]


def _trees():
    return [new_tree(f"Problem {i}: p={p} answer={40 + i} steps=2", str(40 + i)) for i, p in enumerate(PS * 2)]


def _outcome(trees):
    return [(t.status, t.solved_at, t.iteration, t.requests, t.solution) for t in trees]


def test_search_result_does_not_depend_on_completion_order():
    p = MctsParams(max_iterations=8)
    expected = _trees()
    Search(p, make_reward("normalized"), CachedPolicy(ScriptedPolicy(bernoulli_script), None, SamplingParams(),
                                                      5).generate).run(expected)
    for shuffle in range(2):
        policy = ShuffledPolicy(shuffle)
        cp = CachedPolicy(policy, None, SamplingParams(), 5)
        trees = _trees()
        search = Search(p, make_reward("normalized"), submit=cp.submit)
        search.run(trees)
        assert _outcome(trees) == _outcome(expected)
        assert policy.calls == sum(t.requests for t in trees)
        # Trees move on one by one as their calls come back, not in a few lock-step rounds.
        assert search.rounds > 2 * max(t.iteration for t in trees)
        policy.pool.shutdown()


def test_a_slow_tree_does_not_hold_back_the_others():
    """The slow problem's first calls are held until the fast tree has finished all its
    iterations: with lock-step rounds the fast tree could not move past its first step."""
    fast = new_tree("p=0 answer=42 steps=1000", "42")
    slow = new_tree("slow p=1 answer=7 steps=0", "7")
    held: list[tuple[Future, object]] = []
    script = ScriptedPolicy(bernoulli_script)

    class Holding(ScriptedPolicy):
        def submit(self, requests, sampling, seed):
            out = []
            for r in requests:
                f: Future = Future()
                if r.problem.startswith("slow") and not held_released.is_set():
                    held.append((f, r))
                else:
                    f.set_result(script.generate([r], sampling, seed)[0])
                out.append(f)
            return out

    held_released = threading.Event()

    def release():
        deadline = time.monotonic() + 10
        while not fast.done and time.monotonic() < deadline:
            time.sleep(0.001)
        held_released.set()
        for f, r in held:
            f.set_result(script.generate([r], SamplingParams(), 0)[0])

    threading.Thread(target=release, daemon=True).start()
    cp = CachedPolicy(Holding(bernoulli_script), None, SamplingParams(), 0)
    Search(MctsParams(max_iterations=5), make_reward("normalized"), submit=cp.submit).run([fast, slow])
    assert len(held) == 3  # the slow tree's first expansion waited...
    assert (fast.status, fast.iteration, fast.requests) == ("unsolved", 5, 20)  # ...while the fast one finished
    assert (slow.status, slow.solved_at) == ("solved", 1)


def test_several_rollouts_per_leaf():
    t = new_tree("p=0 answer=42 steps=1000", "42")
    policy = _search([t], seed=0, rollouts_per_leaf=2)
    assert (t.status, t.iteration, t.requests, policy.calls) == ("unsolved", 50, 250, 250)
    assert t.root.visits == 50 * 2  # every rollout's reward is backed up


# ---------------------------------------------------------------------------------------
# score / decide, called directly


def _stage(tmp_path, seed=0, **params) -> MctsDifficulty:
    ctx = StageContext(name="mcts_difficulty", seed=seed, out_dir=str(tmp_path), work_dir=str(tmp_path / "_work"))
    stage = MctsDifficulty({**SCRIPTED, **params}, ctx)
    stage.setup()
    return stage


def test_score_columns_and_tallies(tmp_path):
    stage = _stage(tmp_path, seed=3, write_rollouts=True, max_iterations=10)
    batch = make_batch([{"text": "p=1.0 answer=42 steps=2", "answer": "42"},
                        {"text": "p=0 answer=7 steps=1", "answer": "7"},
                        {"text": "p=1.0 answer=5", "answer": None}])
    cols = stage.score(batch)
    assert cols["mcts_status"].to_pylist() == ["solved", "unsolved", "no_reference"]
    assert cols["mcts_difficulty"].to_pylist() == [1, None, None]
    assert cols["mcts_solved"].to_pylist() == [True, False, None]
    assert cols["mcts_iterations"].to_pylist() == [1, 10, 0]
    assert cols["mcts_calls"].to_pylist() == [4, 13, 0]  # 3 children + 1 rollout; the finite tree of steps=1
    assert "The answer is 42." in cols["mcts_solution"][0].as_py() and cols["mcts_solution"][1].as_py() is None
    assert cols[CALLS].to_pylist() == [4, 13, 0] and cols[CACHE_HITS].to_pylist() == [0, 0, 0]
    again = stage.score(batch)  # the same search again: every call answered by the store
    assert again[CALLS].to_pylist() == [0, 0, 0] and again[CACHE_HITS].to_pylist() == [4, 13, 0]
    assert again["mcts_difficulty"] == cols["mcts_difficulty"]


def test_decide_rules():
    batch = make_batch([{"text": str(i)} for i in range(6)])
    batch = batch.append_column("mcts_status", pa.array(["solved", "solved", "unsolved", "http_5xx",
                                                         "budget_exhausted", "no_reference"]))
    batch = batch.append_column("mcts_difficulty", pa.array([3, 4, None, None, None, None], pa.int32()))
    keep, reason = MctsDifficulty({"min_difficulty": 3}).decide(batch)
    assert keep.tolist() == [False, True, True, True, True, True]
    assert reason == ["too_easy", None, None, None, None, None]
    keep, reason = MctsDifficulty({"min_difficulty": 0, "keep_unsolved": False, "on_unscored": "drop"}).decide(batch)
    assert reason == [None, None, "unsolved", "unscored", "unscored", "unscored"]


def test_report_orders_the_histogram_and_names_the_policy():
    stage = MctsDifficulty({"policy": {"backend": "openai", "model": "m", "api_key_env": "SOME_KEY"}})
    rep = stage.report({"difficulty_histogram": {"unsolved": 1, "10": 2, "2": 3, "http_5xx": 1}})
    assert list(rep["difficulty_histogram"]) == ["2", "10", "http_5xx", "unsolved"]
    assert (rep["rows"], rep["model_calls"], rep["cache_hits"]) == (0, 0, 0)
    assert rep["failures_by_kind"] == {} and rep["status"] == {}
    assert rep["policy"] == {"backend": "openai", "model": "m", "api": "completions",
                             "base_url": "http://127.0.0.1:8000/v1"}


# ---------------------------------------------------------------------------------------
# One stage through a real Beam pipeline


def test_run_stage_drops_too_easy_and_counts_calls():
    rows = [{"text": f"Problem {i}: p={p} answer={40 + i} steps=1", "answer": str(40 + i)} for i, p in enumerate(PS)]
    res = run_stage(MctsDifficulty, rows, {**SCRIPTED, "max_iterations": 10, "min_difficulty": 1}, batch_rows=2, seed=3)
    assert res.dropped.column("id").to_pylist() == ["0"]
    assert res.dropped.column("drop_reason").to_pylist() == ["too_easy"]
    assert res.kept.num_rows == 4 and not any(c.startswith("__") for c in res.kept.column_names)
    status = res.kept.column("mcts_status").to_pylist()
    assert status[-1] == "unsolved" and set(status) <= {"solved", "unsolved"}
    c, rep = res.counters, res.report
    assert c["mcts_difficulty/in/test"] == 5 and c["mcts_difficulty/dropped/too_easy/test"] == 1
    assert c["mcts_difficulty/model_calls"] == rep["model_calls"] == rep["requests"] > 0
    assert c["mcts_difficulty/cache_hits"] == rep["cache_hits"] == 0
    assert rep["rows"] == 5 and rep["difficulty_histogram"]["1"] == 1 and rep["difficulty_histogram"]["unsolved"] >= 1
    assert sum(rep["difficulty_histogram"].values()) == 5
    assert rep["iterations"] == sum(res.kept.column("mcts_iterations").to_pylist()) + 1


# ---------------------------------------------------------------------------------------
# Whole recipes (slow)


def _problems(path, ps, copies=1):
    with open(path, "w") as fh:
        for c in range(copies):
            for i, p in enumerate(ps):
                fh.write(json.dumps({"question": f"Problem {c}-{i}: p={p} answer={40 + i} steps=2",
                                     "answer": str(40 + i), "p": p}) + "\n")


def _rows(run):
    tables = [pa.ipc.open_stream(f"{run.out_dir}/{s['path']}").read_all() for s in run.shards]
    return pa.concat_tables(tables).to_pylist() if tables else []


def _recipe(tmp_path, **params):
    return {
        "seed": 3,
        "sources": [{"name": "arith", "paths": [str(tmp_path / "problems.jsonl")], "text_field": "question"}],
        "stages": [{"type": "mcts_difficulty",
                    "params": {"policy": {"backend": "scripted"}, "min_difficulty": 1, **params}}],
        "output": {"dir": str(tmp_path / "out"), "order": "sorted", "sort_by": "source_row"},
        "batch_rows": 4,
    }


@pytest.mark.slow
def test_stage_writes_columns_keeps_hard_and_unsolved_and_resumes_from_cache(tmp_path):
    _problems(tmp_path / "problems.jsonl", PS, copies=2)  # 10 rows, 3 batches
    run = run_recipe(_recipe(tmp_path, write_rollouts=True), tmp_path)
    rep = run.reports["mcts_difficulty"]
    rows = _rows(run)
    kept_p = sorted(r["p"] for r in rows)
    # p=1 is solved at iteration 1 (<= min_difficulty 1): dropped as too easy; p=0 kept unsolved.
    assert kept_p.count(1.0) == 0 and kept_p.count(0.0) == 2
    for r in rows:
        assert r["mcts_status"] in ("solved", "unsolved")
        assert r["mcts_solved"] == (r["mcts_status"] == "solved")
        if r["mcts_solved"]:
            assert r["mcts_difficulty"] > 1 and str(r["answer"]) in r["mcts_solution"]
        else:
            assert r["mcts_difficulty"] is None and r["mcts_iterations"] == 50 and r["mcts_calls"] == 43
    too_easy = run.counters.get("mcts_difficulty/dropped/too_easy/arith", 0)
    assert too_easy + len(rows) == 10
    assert sum(rep["difficulty_histogram"].values()) == rep["rows"] == 10
    n_unsolved = sum(r["mcts_status"] == "unsolved" for r in rows)
    assert rep["difficulty_histogram"]["unsolved"] == n_unsolved >= 2
    assert rep["difficulty_histogram"]["1"] == too_easy >= 2
    assert rep["model_calls"] > 0 and rep["cache_hits"] == 0 and rep["failures_by_kind"] == {}
    assert rep["requests"] == rep["model_calls"]
    assert not any(c.startswith("__") for c in rows[0])

    again = run_recipe(_recipe(tmp_path, write_rollouts=True), tmp_path)
    rep2 = again.reports["mcts_difficulty"]
    assert rep2["model_calls"] == 0 and rep2["cache_hits"] == rep["model_calls"]
    assert _rows(again) == rows


@pytest.mark.slow
def test_run_budget_records_unscored_rows_instead_of_losing_them(tmp_path):
    _problems(tmp_path / "problems.jsonl", [0.0] * 6)
    run = run_recipe(_recipe(tmp_path, max_calls_per_run=30), tmp_path)
    rows = _rows(run)
    assert len(rows) == 6  # nothing lost: on_unscored=keep
    rep = run.reports["mcts_difficulty"]
    assert rep["model_calls"] <= 30
    assert rep["status"].get("budget_exhausted", 0) >= 1
    assert rep["failures_by_kind"].get("budget_exhausted", 0) >= 1
    assert {r["mcts_status"] for r in rows} <= {"unsolved", "budget_exhausted"}
    for r in rows:
        if r["mcts_status"] == "budget_exhausted":
            assert r["mcts_solved"] is None and r["mcts_difficulty"] is None
