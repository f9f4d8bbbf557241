"""`Grade` (what a reward says about one completion) and the base every reward builds on.

A reward grades `(completion, reference)` pairs: `grade` one, `grade_many` a list (one
round-trip to a worker for rewards that run in one), `__call__` the score alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Failure kinds a `Grade` may carry. A wrong answer is not a failure: it has `failure=None`.
NO_ANSWER = "no_answer"            # nothing in the completion reads as a final answer
PARSE_ERROR = "parse_error"        # an answer was found but could not be read as math
BAD_REFERENCE = "bad_reference"    # the reference itself could not be read
TIMEOUT = "timeout"                # the reward ran past its time limit (its worker was killed)
WORKER_DIED = "worker_died"        # the worker process grading it died (e.g. out of memory)
ERROR = "error"                    # the reward raised an exception
TESTS_FAILED = "tests_failed"      # code: an assert (or the test function) failed
RUNTIME_ERROR = "runtime_error"    # code: the program raised something other than an assert
MEMORY_LIMIT = "memory_limit"      # code: the program ran out of its address-space limit
SANDBOX_ERROR = "sandbox_error"    # code: the sandbox itself could not run the program


@dataclass(frozen=True)
class Grade:
    """One graded completion: `score` in [0, 1], what was `extracted` from the completion (as a
    person auditing the rollout should see it; None when nothing was, or for user rewards), and
    `failure` (None, or one of the kinds above) saying why a score is 0 without being wrong."""

    score: float
    extracted: str | None = None
    failure: str | None = None


class RewardBase:
    """`grade_here` does the work in this process; subclasses that must be time-bounded
    override `grade_many` to send the work to a worker process."""

    def grade_here(self, completion: str, reference: str) -> Grade:
        raise NotImplementedError

    def warm(self) -> None:
        """Import what `grade_here` needs (run once per worker, outside any grade's time limit)."""

    def grade_many(self, pairs: Sequence[tuple[str, str]]) -> list[Grade]:
        return [self.grade_here(c, r) for c, r in pairs]

    def grade(self, completion: str, reference: str) -> Grade:
        return self.grade_many([(completion, reference)])[0]

    def __call__(self, completion: str, reference: str) -> float:
        return self.grade(completion, reference).score
