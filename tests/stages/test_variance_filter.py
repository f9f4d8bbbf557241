"""`variance_filter`: the stage's hooks called directly on small batches (rewards read from
the rows, a scripted policy of known success probability, the row-local rules, top-k and
quotas), one real Beam pipeline per behaviour through `run_stage`, and — marked slow — whole
recipes: precomputed rewards on real GSM8K rollouts, the scripted policy end to end, and a
run killed mid-way that resumes from the rollout store without regenerating."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import ROOT, run_recipe
from thresher.core.context import StageContext
from thresher.models.policy import Request
from thresher.models.rewards import make_reward
from thresher.models.rollout_store import RolloutStore
from thresher.stages.selection.model_selector import CACHE_HITS, CALLS, FAILURES, REWARD_FAILURES
from thresher.stages.selection.variance_filter import TopCandidates, VarianceFilter, values_at
from thresher.testing.harness import make_batch, run_stage
from thresher.testing.scripted import bernoulli_script

# `normalized` judges the script's integer answers as `math` does, without loading sympy
# (math-verify), which keeps these fast tests fast.
SCRIPTED = {"policy": {"backend": "scripted"}, "reward": "normalized"}


def _stage(tmp_path, seed=0, **params) -> VarianceFilter:
    ctx = StageContext(name="variance_filter", seed=seed, out_dir=str(tmp_path), work_dir=str(tmp_path / "_work"))
    stage = VarianceFilter(params, ctx)
    stage.setup()
    return stage


def _scored(rate, var, source="test", first_key=0):
    """A batch as `score` leaves it: the two score columns (None = unscored)."""
    batch = make_batch([{"text": f"q{i}"} for i in range(len(rate))], source=source, first_key=first_key)
    batch = batch.append_column("solve_rate", pa.array(rate, pa.float64()))
    return batch.append_column("reward_variance", pa.array(var, pa.float64()))


# ---------------------------------------------------------------------------------------
# score / decide, called directly


def test_values_at_walks_dotted_paths_lists_and_json_text():
    batch = make_batch([
        {"text": "a", "s": [{"ok": True}, {"ok": False}], "j": '{"r": [1, 0.5]}'},
        {"text": "b", "s": [{"ok": None}], "j": "not json"},
    ])
    assert values_at(batch, ["s.ok", "j.r"]) == [[True, False, 1, 0.5], []]
    with pytest.raises(KeyError, match="missing"):
        values_at(batch, ["missing.x"])


def test_score_from_precomputed_rewards_needs_no_model(tmp_path):
    stage = _stage(tmp_path, precomputed_rewards=["r"], min_rollouts=2)
    assert stage.session.cp is None  # no policy, no rollout store
    batch = make_batch([{"text": "a", "r": [1, 0, 1, 1]}, {"text": "b", "r": [1, 1]}, {"text": "c", "r": [0]}])
    cols = stage.score(batch)
    assert cols["solve_rate"].to_pylist() == [0.75, 1.0, None]
    assert cols["reward_variance"].to_pylist() == [0.1875, 0.0, None]
    assert cols["n_rollouts"].to_pylist() == [4, 2, 1]
    assert cols["variance_status"].to_pylist() == ["scored", "scored", "too_few_rewards"]
    assert cols[CALLS].to_pylist() == [0, 0, 0] and cols[FAILURES].to_pylist() == ["{}"] * 3
    assert "rollouts" not in cols
    assert not (tmp_path / "cache").exists()


def test_score_with_scripted_policy_matches_the_script(tmp_path):
    stage = _stage(tmp_path, seed=7, n=8, write_rollouts=True, **SCRIPTED)
    rows = [{"text": f"Problem {i}: p={p} answer={100 + i}", "answer": str(100 + i)} for i, p in enumerate(PS)]
    rows.append({"text": "Problem 9: p=0.5 answer=9", "answer": None})
    cols = stage.score(make_batch(rows))
    for i in range(len(PS)):
        r = _expected_rewards(rows[i]["text"], rows[i]["answer"], 8, seed=7, reward="normalized")
        assert cols["solve_rate"][i].as_py() == pytest.approx(np.mean(r))
        assert cols["reward_variance"][i].as_py() == pytest.approx(np.var(r))
        assert [x["reward"] for x in cols["rollouts"][i].as_py()] == r
        for x in cols["rollouts"][i].as_py():  # what the reward read, for the training job
            assert x["extracted"] == x["text"].rsplit("The answer is ", 1)[1].rstrip(".")
            assert x["reward_failure"] is None
    assert cols["variance_status"].to_pylist() == ["scored"] * 5 + ["no_reference"]
    assert cols["rollouts"][5].as_py() == []  # generated, but nothing to judge them against
    assert cols[CALLS].to_pylist() == [8] * 6 and cols[CACHE_HITS].to_pylist() == [0] * 6
    # The same batch again: every generation comes from the rollout store.
    again = stage.score(make_batch(rows))
    assert again[CALLS].to_pylist() == [0] * 6 and again[CACHE_HITS].to_pylist() == [8] * 6
    assert again["solve_rate"] == cols["solve_rate"]


def test_reward_failures_are_counted_by_kind_and_kept_with_each_rollout(tmp_path):
    stage = _stage(tmp_path, precomputed_responses=["resp"], reward="normalized", last_number_fallback=False,
                   write_rollouts=True)
    batch = make_batch([{"text": "q", "answer": "4", "resp": ["The answer is 4.", "no idea", "The answer is 5."]},
                        {"text": "r", "answer": "1", "resp": ["hmm", "The answer is 1."]}])
    cols = stage.score(batch)
    got = [[(x["reward"], x["extracted"], x["reward_failure"]) for x in row] for row in cols["rollouts"].to_pylist()]
    assert got == [[(1.0, "4", None), (0.0, None, "no_answer"), (0.0, "5", None)],
                   [(0.0, None, "no_answer"), (1.0, "1", None)]]
    assert cols["solve_rate"].to_pylist() == pytest.approx([1 / 3, 0.5])
    assert [json.loads(s) for s in cols[REWARD_FAILURES].to_pylist()] == [{"no_answer": 1}, {"no_answer": 1}]


def test_decide_row_local_rules():
    stage = VarianceFilter({"min_variance": 0.1, "solve_rate_band": [0.2, 0.7], "on_unscored": "drop"})
    batch = _scored([1.0, 0.0, 0.5, 0.9, 0.8, 0.5, None], [0.0, 0.0, 0.0, 0.09, 0.16, 0.25, None])
    keep, reason = stage.decide(batch, None)
    assert keep.tolist() == [False, False, False, False, False, True, False]
    assert reason == ["all_correct", "all_wrong", "all_equal", "low_variance", "solve_rate_out_of_band", None,
                      "unscored"]
    keep, reason = VarianceFilter({"drop_all_equal": False}).decide(batch, None)
    assert keep.all() and reason == [None] * 7  # unscored rows are kept by default


def test_top_candidates_then_decide_applies_top_k_and_quotas():
    stage = VarianceFilter({"top_k": 3, "source_quotas": {"a": 1}})
    a = _scored([0.5, 0.5, 0.4, 1.0], [0.25, 0.25, 0.24, 0.0], source="a")
    b = _scored([0.3, 0.2, None], [0.21, 0.16, None], source="b", first_key=10)
    fn = TopCandidates(stage.params)
    # Two partial accumulators merged, as a runner with several workers would.
    acc = fn.merge_accumulators([fn.add_input(fn.create_accumulator(), a), fn.add_input(fn.create_accumulator(), b)])
    quota_keys, top_keys = fn.extract_output(acc)
    assert quota_keys.tolist() == [0, 10, 11]  # a: its best one (ties: input order); b: unlimited
    assert top_keys.tolist() == [0, 10, 11]
    keep, reason = stage.decide(a, (quota_keys, top_keys))
    assert keep.tolist() == [True, False, False, False]
    assert reason == [None, "over_source_quota", "over_source_quota", "all_correct"]
    keep, reason = stage.decide(b, (quota_keys, top_keys))
    assert keep.tolist() == [True, True, True] and reason == [None, None, None]
    assert fn.extract_output(fn.create_accumulator())[0].size == 0


# ---------------------------------------------------------------------------------------
# One stage through a real Beam pipeline


def test_run_stage_top_k_counts_and_report():
    rows = [{"text": f"Problem {i}: p={p} answer={100 + i}", "answer": str(100 + i)} for i, p in enumerate(PS * 2)]
    res = run_stage(VarianceFilter, rows, {**SCRIPTED, "n": 8, "top_k": 2}, batch_rows=3, seed=7)
    rewards = [_expected_rewards(r["text"], r["answer"], 8, seed=7, reward="normalized") for r in rows]
    var = [float(np.var(r)) for r in rewards]
    mixed = [i for i, v in enumerate(var) if v > 0]
    top = sorted(sorted(mixed, key=lambda i: (-var[i], i))[:2])
    assert [int(x) for x in res.kept.column("id").to_pylist()] == top
    assert res.kept.column("reward_variance").to_pylist() == pytest.approx([var[i] for i in top])
    assert not any(c.startswith("__") for c in res.kept.column_names + res.dropped.column_names)
    reasons = dict(zip(res.dropped.column("id").to_pylist(), res.dropped.column("drop_reason").to_pylist(),
                       strict=True))
    assert {reasons[str(i)] for i in mixed if i not in top} == {"below_top_k"}
    assert reasons["0"] == "all_correct" and reasons["4"] == "all_wrong"
    c = res.counters
    assert c["variance_filter/in/test"] == 10 and c["variance_filter/model_calls"] == 80
    assert c["variance_filter/cache_hits"] == 0
    assert c["variance_filter/dropped/below_top_k/test"] == len(mixed) - 2
    assert sum(v for k, v in c.items() if "/dropped/" in k) == 8
    rep = res.report
    assert (rep["rows"], rep["model_calls"], rep["rollouts"], rep["cache_hits"]) == (10, 80, 80, 0)
    assert rep["all_correct"] == 2 and rep["status"] == {"scored": 10}
    assert rep["policy"]["backend"] == "scripted" and rep["sampling"]["temperature"] == 0.7


def test_run_stage_without_ranking_keeps_every_mixed_row():
    rows = [{"text": "a", "r": [1, 0]}, {"text": "b", "r": [1, 1]}, {"text": "c", "r": []}]
    res = run_stage(VarianceFilter, rows, {"precomputed_rewards": ["r"], "on_unscored": "drop"})
    assert res.kept.column("text").to_pylist() == ["a"]
    assert res.dropped.column("drop_reason").to_pylist() == ["all_correct", "unscored"]
    assert "variance_filter/model_calls" not in res.counters  # no model, nothing counted
    assert res.report["model_calls"] == 0 and "policy" not in res.report


# ---------------------------------------------------------------------------------------
# Whole recipes (slow)


GSM_SAMPLERS = ["6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"]


def _rows(run):
    tables = [pa.ipc.open_stream(f"{run.out_dir}/{s['path']}").read_all() for s in run.shards]
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.mark.slow
def test_gsm8k_precomputed_rewards_drop_all_correct_and_all_wrong(shared_data, tmp_path):
    path = shared_data / "rollouts" / "gsm8k_example_model_solutions.jsonl.gz"
    run = run_recipe({
        "sources": [{"name": "gsm8k", "paths": [str(path)], "text_template": "{question}",
                     "keep_fields": ["ground_truth", *GSM_SAMPLERS]}],
        "stages": [{"type": "variance_filter",
                    "params": {"precomputed_rewards": [f"{s}.is_correct" for s in GSM_SAMPLERS]}}],
        "output": {"dir": str(tmp_path / "out")},
    }, tmp_path)
    c = run.counters
    assert c["variance_filter/in/gsm8k"] == 1319
    assert c["variance_filter/dropped/all_wrong/gsm8k"] == 432
    assert c["variance_filter/dropped/all_correct/gsm8k"] == 156
    assert c["written/gsm8k"] == 731
    rep = run.reports["variance_filter"]
    assert (rep["all_wrong"], rep["all_correct"], rep["rows"], rep["rollouts"]) == (432, 156, 1319, 4 * 1319)
    # 1/4, 2/4, 3/4 correct: variances 3/16, 1/4, 3/16
    assert rep["variance_histogram"]["0.175-0.2"] == 290 + 205
    assert rep["variance_histogram"]["0.225-0.25"] == 236
    assert rep["model_calls"] == 0 and "policy" not in rep
    assert not (tmp_path / "out" / "cache").exists()  # no model, no rollout store
    rows = _rows(run)
    assert {r["n_rollouts"] for r in rows} == {4}
    assert sorted({r["solve_rate"] for r in rows}) == [0.25, 0.5, 0.75]


@pytest.mark.slow
def test_gsm8k_responses_rewarded_here_agree_with_the_labels(shared_data, tmp_path):
    # precomputed_responses: our answer extraction + math-verify on the same 4 solutions; on a
    # small slice it must agree with the dataset's own correctness labels.
    import gzip

    src = shared_data / "rollouts" / "gsm8k_example_model_solutions.jsonl.gz"
    with gzip.open(src, "rt") as fh:
        lines = [json.loads(next(fh)) for _ in range(60)]
    for r in lines:
        r["answer"] = r["ground_truth"].rsplit("A:", 1)[1].strip()
    (tmp_path / "slice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = run_recipe({
        "sources": [{"name": "gsm8k", "paths": [str(tmp_path / "slice.jsonl")], "text_field": "question"}],
        "stages": [{"type": "variance_filter", "params": {
            "precomputed_responses": [f"{s}.solution" for s in GSM_SAMPLERS], "drop_all_equal": False}}],
        "output": {"dir": str(tmp_path / "out"), "order": "sorted", "sort_by": "source_row"},
    }, tmp_path)
    rows = _rows(run)
    assert len(rows) == 60
    agree = sum(r["solve_rate"] == np.mean([r[s]["is_correct"] for s in GSM_SAMPLERS]) for r in rows)
    print(f"solve rate from our rewards == from labels on {agree}/60 problems")
    assert agree >= 57


PS = [1.0, 0.5, 0.2, 0.05, 0.0]


def _write_problems(path: Path, ps, sources=("a",)):
    with open(path, "w") as fh:
        for i, p in enumerate(ps):
            fh.write(json.dumps({"question": f"Problem {i}: p={p} answer={100 + i}", "answer": str(100 + i),
                                 "p": p, "i": i}) + "\n")


def _expected_rewards(question: str, answer: str, n: int, seed: int, reward: str = "math") -> list[float]:
    """What the scripted policy answers, computed directly (without the stage)."""
    reward = make_reward(reward)
    return [reward(bernoulli_script(Request(question, sample=str(j)), seed)[0], answer) for j in range(n)]


def _scripted_recipe(tmp_path, files, **params):
    return {
        "seed": 7,
        "sources": [{"name": name, "paths": [str(f)], "text_field": "question"} for name, f in files],
        "stages": [{"type": "variance_filter", "params": {"policy": {"backend": "scripted"}, **params}}],
        "output": {"dir": str(tmp_path / "out"), "order": "sorted", "sort_by": "i"},
        "batch_rows": 3,
    }


@pytest.mark.slow
def test_scripted_policy_keeps_exactly_the_mixed_problems(tmp_path):
    ps = PS * 4  # 20 problems, 7 batches
    _write_problems(tmp_path / "p.jsonl", ps)
    run = run_recipe(_scripted_recipe(tmp_path, [("a", tmp_path / "p.jsonl")], write_rollouts=True), tmp_path)
    expected = {}
    for i, p in enumerate(ps):
        r = _expected_rewards(f"Problem {i}: p={p} answer={100 + i}", str(100 + i), 8, seed=7)
        expected[i] = (float(np.mean(r)), float(np.var(r)))
    keep = sorted(i for i, (_, v) in expected.items() if v > 0)
    rows = _rows(run)
    assert [r["i"] for r in rows] == keep
    # p=1 and p=0 are never kept; p=0.5 always is (over 8 draws, for these seeds)
    assert not any(ps[i] in (0.0, 1.0) for i in keep) and all(i in keep for i, p in enumerate(ps) if p == 0.5)
    for r in rows:
        assert (r["solve_rate"], r["reward_variance"]) == pytest.approx(expected[r["i"]])
        assert r["n_rollouts"] == 8 and r["variance_status"] == "scored"
        assert len(r["rollouts"]) == 8 and sum(x["reward"] for x in r["rollouts"]) == r["solve_rate"] * 8
    rep = run.reports["variance_filter"]
    assert rep["model_calls"] == 20 * 8 and rep["cache_hits"] == 0
    assert rep["all_correct"] == 4 and rep["all_wrong"] == 20 - len(keep) - 4
    assert sum(rep["solve_rate_histogram"].values()) == 20


@pytest.mark.slow
def test_top_k_quotas_and_band(tmp_path):
    ps = [0.5, 0.3, 0.2, 0.5, 0.4, 0.1, 0.6, 0.5]
    _write_problems(tmp_path / "a.jsonl", ps)
    with open(tmp_path / "b.jsonl", "w") as fh:
        for i, p in enumerate(ps):
            fh.write(json.dumps({"question": f"Other {i}: p={p} answer=7", "answer": "7", "p": p, "i": 100 + i}) + "\n")
    files = [("a", tmp_path / "a.jsonl"), ("b", tmp_path / "b.jsonl")]
    base = run_recipe(_scripted_recipe(tmp_path, files, n=16), tmp_path)
    all_rows = _rows(base)
    by_var = sorted(all_rows, key=lambda r: (-r["reward_variance"], r["i"]))  # the input order tie-break

    run = run_recipe(_scripted_recipe(tmp_path, files, n=16, top_k=5), tmp_path)
    assert sorted(r["i"] for r in _rows(run)) == sorted(r["i"] for r in by_var[:5])
    assert run.counters["variance_filter/dropped/below_top_k/a"] \
        + run.counters["variance_filter/dropped/below_top_k/b"] == len(all_rows) - 5
    assert run.reports["variance_filter"]["cache_hits"] == 16 * 16  # scores came from the store

    run = run_recipe(_scripted_recipe(tmp_path, files, n=16, source_quotas={"a": 2}), tmp_path)
    got = _rows(run)
    best_a = [r["i"] for r in by_var if r["source"] == "a"][:2]
    assert sorted(r["i"] for r in got if r["source"] == "a") == sorted(best_a)
    assert sorted(r["i"] for r in got if r["source"] == "b") == sorted(r["i"] for r in all_rows if r["source"] == "b")

    run = run_recipe(_scripted_recipe(tmp_path, files, n=16, solve_rate_band=[0.3, 0.6]), tmp_path)
    assert sorted(r["i"] for r in _rows(run)) == sorted(r["i"] for r in all_rows if 0.3 <= r["solve_rate"] <= 0.6)




# ---------------------------------------------------------------------------------------
# Kill and resume


def slow_script(req, seed):
    """bernoulli_script, 20 ms per call, logging each call to a file (kill/resume test)."""
    time.sleep(0.02)
    with open(os.environ["SLOW_CALLS_LOG"], "a") as fh:
        fh.write(f"{req.problem}|{req.sample}\n")
    return bernoulli_script(req, seed)


@pytest.mark.slow
def test_killed_run_resumes_without_regenerating(tmp_path):
    _write_problems(tmp_path / "p.jsonl", [0.5] * 40)
    recipe = _scripted_recipe(tmp_path, [("a", tmp_path / "p.jsonl")],
                              policy={"backend": "scripted", "script": "tests.stages.test_variance_filter:slow_script"})
    recipe["batch_rows"] = 4
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    calls_log = tmp_path / "calls.log"
    env = {**os.environ, "SLOW_CALLS_LOG": str(calls_log), "PYTHONPATH": str(ROOT)}
    code = ("import json,sys; from tests.conftest import run_recipe; from pathlib import Path; "
            f"run_recipe(json.load(open({str(tmp_path / 'recipe.json')!r})), Path({str(tmp_path)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store_path = tmp_path / "out" / "cache" / "rollouts.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some, not all, generations are stored
        if store_path.exists() and len(RolloutStore(str(store_path))) >= 100:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = len(RolloutStore(str(store_path)))
    assert 100 <= stored < 320, stored
    first_calls = calls_log.read_text().splitlines()

    os.environ["SLOW_CALLS_LOG"] = str(calls_log)
    try:
        run = run_recipe(recipe, tmp_path)
    finally:
        del os.environ["SLOW_CALLS_LOG"]
    rep = run.reports["variance_filter"]
    all_calls = calls_log.read_text().splitlines()
    second = all_calls[len(first_calls):]
    # Every stored generation was answered from disk; only the rest went to the model.
    assert rep["cache_hits"] == stored and rep["model_calls"] == 320 - stored == len(second)
    assert not set(second) & set(first_calls[:stored])
    assert len(RolloutStore(str(store_path))) == 320
