"""Rewards: final-answer extraction, the built-in reward kinds (math-verify included), user
rewards by import path, and the problems `check_reward` reports before a run."""

from __future__ import annotations

import pickle

import pytest

from thresher.models.rewards import AnswerReward, check_reward, extract_answer, has_explicit_answer, make_reward


@pytest.mark.parametrize("text,expected", [
    ("so x = \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("18 - 2 = 16 eggs\n#### 16", "16"),
    ("Adding gives 7. The answer is: $1,250 dollars.", "1,250"),
    ("The final answer is (C).", "(C)"),
    ("first 3 then 12 then 41", "41"),
    ("no numbers", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_reward_kinds():
    math = make_reward("math")
    assert math("The answer is \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert math("#### 1,250", "1250") == 1.0
    assert math("The answer is 18.00", "18") == 1.0
    assert math("The answer is 17", "18") == 0.0
    assert math("blah", "#### 42") == 0.0 and math("ends with 42", "work...\n#### 42") == 1.0
    assert make_reward("exact")("#### 18.0", "18") == 0.0
    assert make_reward("normalized")("The answer is $18.0$.", "18") == 1.0
    assert make_reward("choice")("I pick (b). The answer is B", "B") == 1.0
    assert make_reward("choice")("The answer is C", "B") == 0.0
    assert AnswerReward("math", last_number=False)("it is 42", "42") == 0.0
    user = make_reward("tests.models.test_rewards:length_reward")
    assert user("abcd", "x") == 0.4


def length_reward(completion: str, reference: str) -> float:
    return len(completion) / 10


def test_has_explicit_answer_ignores_a_bare_last_number():
    assert has_explicit_answer("so \\boxed{3}") and has_explicit_answer("The answer is 3.")
    assert not has_explicit_answer("Step 1: 3 + 4 = 7")


def test_builtin_rewards_pickle_for_workers():
    reward = make_reward("normalized", last_number=False)
    assert pickle.loads(pickle.dumps(reward)) == reward == AnswerReward("normalized", False)


def test_check_reward_says_what_is_wrong():
    assert check_reward("math") is None and check_reward("tests.models.test_rewards:length_reward") is None
    assert "not of the form package.module:name" in check_reward("mathh")
    assert "built-in rewards: math, exact" in check_reward("mathh")
    assert "no module named 'no_such_module'" in check_reward("no_such_module:f")
    assert "has no attribute 'nope'" in check_reward("tests.models.test_rewards:nope")
    assert check_reward("tests.models.test_rewards:NOT_CALLABLE") == (
        "reward 'tests.models.test_rewards:NOT_CALLABLE' is not callable")


NOT_CALLABLE = 3
