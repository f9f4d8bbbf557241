"""The `math` reward against real model solutions that carry correctness labels
(../shared/data/rollouts/normalized.jsonl.gz: GPT-3 GSM8K solutions labelled by the GSM8K
authors, Qwen2.5-Math MATH solutions labelled by Qwen's own grader).

On all 6,076 labelled solutions the reward agrees with 6,075 (bench/rewards.py prints the rate
on 2,000 of them); the one disagreement is a wrong label: MATH problem 72 of the Qwen file,
reference `10{,}000`, solution `\\boxed{10000}` — the same number, which Qwen's grader marks
wrong (it does not read `{,}` as a thousands separator); math-verify reads it. This test grades
a slice that keeps every MATH problem with a wrong sample, so the disagreement is in it."""

from __future__ import annotations

import gzip
import json

import pytest

from thresher.models.rewards import make_reward

pytestmark = pytest.mark.slow


def _slice(shared_data):
    with gzip.open(shared_data / "rollouts" / "normalized.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    math_rows = [r for r in rows if r["dataset"] == "math_test"]
    gsm_rows = [r for r in rows if r["dataset"] == "gsm8k_test"]
    hard = [r for r in math_rows if not all(s["correct"] for s in r["samples"])]
    easy = [r for r in math_rows if all(s["correct"] for s in r["samples"])][::16]
    return hard + easy + gsm_rows[::40]


def test_math_reward_agrees_with_the_labelled_rollouts(shared_data):
    rows = _slice(shared_data)
    pairs, labels, where = [], [], []
    for r in rows:
        for s in r["samples"]:
            pairs.append((s["response"], r["reference_answer"]))
            labels.append(bool(s["correct"]))
            where.append(f"{r['problem_id']} ({s['sampler']})")
    grades = make_reward("math", reward_timeout_s=10).grade_many(pairs)
    disagree = [(where[i], pairs[i][1], grades[i].extracted, labels[i])
                for i in range(len(pairs)) if (grades[i].score == 1.0) != labels[i]]
    for d in disagree:
        print("disagreement:", d)
    print(f"agreement {len(pairs) - len(disagree)}/{len(pairs)}")
    assert len(pairs) == 292
    assert disagree == [("qwen25math_math_cot_100:72 (qwen25math_cot_sample)", "10{,}000", "10000", False)]
    assert [g.failure for g in grades if g.failure] == []
