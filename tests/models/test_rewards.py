"""Rewards: the interface other modules code against (`make_reward`, `check_reward`,
`has_explicit_answer`, `Grade`), the string rewards, pickling, and user rewards.

The math and choice tables are in test_reward_table.py, the worker pool and its time limit in
test_reward_timeout.py, the code sandbox in test_reward_code.py, the agreement with labelled
rollouts in test_reward_rollouts.py."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from thresher.core.imports import ImportProblem
from thresher.models.rewards import (
    AnswerReward,
    ChoiceReward,
    CodeReward,
    Grade,
    MathReward,
    UserReward,
    check_reward,
    extract_answer,
    has_explicit_answer,
    make_reward,
)


@pytest.mark.parametrize("text,expected", [
    ("so x = \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("18 - 2 = 16 eggs\n#### 16", "16"),
    ("Adding gives 7. The answer is: $1,250 dollars.", "1,250"),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),  # not "1", the first number after the marker
    ("Final answer: $x^2$", "x^2"),
    ("The answer is **12** apples.", "12"),
    ("The final answer is (C).", "(C)"),
    ("first 3 then 12 then 41", "41"),
    ("no numbers", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_make_reward_builds_each_kind_with_its_settings():
    assert make_reward("math") == MathReward(last_number=True, timeout_s=5.0)
    assert make_reward("math", last_number=False, reward_timeout_s=2) == MathReward(False, 2)
    assert make_reward("choice") == ChoiceReward()
    assert make_reward("code", reward_timeout_s=3) == CodeReward(timeout_s=3)
    assert make_reward("exact") == AnswerReward("exact", True)
    assert make_reward("normalized", last_number=False) == AnswerReward("normalized", False)
    assert make_reward("tests.models.test_rewards:length_reward", reward_timeout_s=9) == UserReward(
        "tests.models.test_rewards:length_reward", 9)


def test_string_rewards_grade_with_what_they_extracted():
    exact, norm = make_reward("exact"), make_reward("normalized")
    assert exact.grade("#### 18.0", "18") == Grade(0.0, "18.0", None)
    assert exact.grade("#### 18", "work...\n#### 18") == Grade(1.0, "18", None)
    assert norm.grade("The answer is $18.0$.", "18") == Grade(1.0, "18.0", None)
    assert norm.grade("The answer is: $1,250 dollars.", "1250") == Grade(1.0, "1,250", None)
    assert norm.grade("nothing here", "3") == Grade(0.0, None, "no_answer")
    assert AnswerReward("normalized", last_number=False).grade("it is 42", "42").failure == "no_answer"
    assert norm("The answer is 17", "18") == 0.0 and norm("The answer is 18", "18") == 1.0
    assert norm.grade_many([("#### 1", "1"), ("#### 2", "1")]) == [Grade(1.0, "1", None), Grade(0.0, "2", None)]


def test_grade_is_a_frozen_dataclass():
    g = Grade(1.0, "x", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.score = 0.0  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(Grade)] == ["score", "extracted", "failure"]


def length_reward(completion: str, reference: str) -> float:
    return len(completion) / 10


def test_a_user_reward_is_wrapped_with_grade():
    user = make_reward("tests.models.test_rewards:length_reward")
    assert user.grade_here("abcd", "x") == Grade(0.4, None, None)
    assert check_reward("tests.models.test_rewards:length_reward") is None


def test_has_explicit_answer_ignores_a_bare_last_number():
    assert has_explicit_answer("so \\boxed{3}") and has_explicit_answer("The answer is 3.")
    assert has_explicit_answer("work\n#### 3") and has_explicit_answer("Final answer: C")
    assert not has_explicit_answer("Step 1: 3 + 4 = 7")


@pytest.mark.parametrize("spec", ["math", "choice", "code", "exact", "normalized",
                                  "tests.models.test_rewards:length_reward"])
def test_every_reward_pickles_for_workers(spec):
    reward = make_reward(spec, last_number=False, reward_timeout_s=3)
    assert pickle.loads(pickle.dumps(reward)) == reward


def test_check_reward_says_what_is_wrong():
    assert check_reward("math") is None and check_reward("code") is None
    assert "not of the form package.module:name" in check_reward("mathh")
    assert "built-in rewards: math, exact, normalized, choice, code" in check_reward("mathh")
    assert "no module named 'no_such_module'" in check_reward("no_such_module:f")
    assert "has no attribute 'nope'" in check_reward("tests.models.test_rewards:nope")
    assert check_reward("tests.models.test_rewards:NOT_CALLABLE") == (
        "reward 'tests.models.test_rewards:NOT_CALLABLE' is not callable")
    with pytest.raises(ImportProblem, match="no module named 'no_such_module'"):
        make_reward("no_such_module:f")


NOT_CALLABLE = 3
