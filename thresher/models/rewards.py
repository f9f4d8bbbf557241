"""Rewards: grade a model's completion against a problem's reference.

`make_reward(spec)` builds one from a recipe's `reward:` value. Every reward is picklable (it
travels to Beam workers) and has `grade(completion, reference) -> Grade` (score in [0, 1], what
it `extracted` from the completion, and a `failure` kind or None), `grade_many(pairs)`, and
`__call__(completion, reference) -> float` (the score alone).

* `math`     (default) math-verify end to end: its answer extraction on the completion, the same
             parser on the reference, its equivalence (1/2 == 0.5, \\frac{1}{2}, 50% == 0.5,
             1,250 == 1250, GSM8K `####`). Runs in a worker process, `reward_timeout_s` per
             completion (reward_math.py).
* `choice`   multiple choice: the letter (A-J) the completion chose, the way people write it
             ("(B)", "Answer: C", "I think C", "**B**", "D) 42", "\\boxed{D}") (reward_choice.py).
* `code`     the reference is HumanEval-style test code; the completion's code runs against it in
             a sandboxed subprocess with time and memory limits (reward_code.py).
* `exact` / `normalized`  the extracted final answer compared with the reference as a string,
             exactly or after normalising case, spaces, `$`, thousands separators (reward_answer.py).
* `package.module:function`  a user reward `(completion, reference) -> float`, imported by path;
             it runs in a worker process, bounded by `reward_timeout_s` like `math`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from thresher.core.imports import ImportProblem, import_object
from thresher.models.reward_answer import AnswerReward, extract_answer, has_explicit_answer, normalize_answer
from thresher.models.reward_choice import ChoiceReward
from thresher.models.reward_code import CodeReward
from thresher.models.reward_grade import Grade, RewardBase
from thresher.models.reward_math import MathReward
from thresher.models.reward_timeout import DEFAULT_TIMEOUT_S, grade_bounded

Reward = Callable[[str, str], float]

BUILTIN = ("math", "exact", "normalized", "choice", "code")

__all__ = ["BUILTIN", "AnswerReward", "ChoiceReward", "CodeReward", "Grade", "MathReward", "Reward",
           "UserReward", "check_reward", "extract_answer", "has_explicit_answer", "make_reward",
           "normalize_answer"]


@lru_cache(maxsize=64)
def _user_function(spec: str):
    return import_object(spec, "reward")


@dataclass(frozen=True)
class UserReward(RewardBase):
    """A `module:function` reward returning a float, run in a worker process (bounded by
    `timeout_s`); it extracts nothing, so its grades have `extracted=None`."""

    spec: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def grade_many(self, pairs):
        return grade_bounded(self, pairs, self.timeout_s)

    def warm(self) -> None:
        _user_function(self.spec)

    def grade_here(self, completion: str, reference: str) -> Grade:
        return Grade(float(_user_function(self.spec)(completion, reference)), None, None)


def make_reward(spec: str, last_number: bool = True, reward_timeout_s: float = DEFAULT_TIMEOUT_S) -> RewardBase:
    """Build a reward from its recipe name or a `module:function` import path.

    `last_number` (math, exact, normalized): also accept a bare last number as the answer.
    `reward_timeout_s`: the time limit per completion (math, code and user rewards)."""
    if spec == "math":
        return MathReward(last_number, reward_timeout_s)
    if spec == "choice":
        return ChoiceReward()
    if spec == "code":
        return CodeReward(timeout_s=reward_timeout_s)
    if spec in ("exact", "normalized"):
        return AnswerReward(spec, last_number)
    problem = check_reward(spec)
    if problem:
        raise ImportProblem(problem)
    return UserReward(spec, reward_timeout_s)


def check_reward(spec: str) -> str | None:
    """A problem with a reward spec, or None (used by stages' `check`)."""
    if spec in BUILTIN:
        return None
    try:
        fn = _user_function(spec)
    except ImportProblem as exc:
        return f"{exc} (or one of the built-in rewards: {', '.join(BUILTIN)})"
    except Exception as exc:  # the user's module failed while importing
        return f"reward {spec!r}: importing it failed: {type(exc).__name__}: {exc}"
    if not callable(fn):
        return f"reward {spec!r} is not callable"
    return None
