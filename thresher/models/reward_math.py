"""The `math` reward: math-verify end to end — its extraction of the final answer from the
completion, the same parser on the reference, and its equivalence check — bounded in time by
running in a worker process (`reward_timeout`).

math-verify reads `\\boxed{}`, `$...$`/`\\(...\\)`/`\\[...\\]` LaTeX, fractions, roots, powers,
percent (50% == 0.5 == 50), units in `\\text{}`, thousands separators, tuples and intervals, and
prefers an answer after "final answer is"/"answer:" to a bare last number. `prepare` fills the
few gaps that real completions hit, each checked in tests/models/test_reward_table.py:

* GSM8K's `#### 42` is not one of its anchors (text after it would win): it becomes
  "The final answer is 42".
* `\\$` (a literal dollar sign) would open nothing and hide the number after it: it is removed.
* LaTeX written after an answer marker without `$` ("The answer is 5\\sqrt{2}.",
  "The answer is (3, -2).", "The answer is x^2.", "The answer is 2x+3.") is read by its plain-expression parser only
  up to the first non-number, or not at all: the span is wrapped in `$...$` so its LaTeX parser
  reads all of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from thresher.models.reward_grade import BAD_REFERENCE, NO_ANSWER, PARSE_ERROR, Grade, RewardBase
from thresher.models.reward_timeout import DEFAULT_TIMEOUT_S, grade_bounded

_GSM8K = re.compile(r"####\s*")
# The last answer marker and the rest of its line.
_MARKER = re.compile(r"(?i:(?:final\s+answer|the\s+answer)\s+is(?:\s*:)?|(?:final\s+)?answer\s*:)[ \t]*([^\n]*)")
_TRAILING = re.compile(r"(?:\*\*|[\s.,;:])+$")
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
# LaTeX commands, powers or subscripts ("x^2" is not read at all by the plain parser), or a
# parenthesised/bracketed list.
_LATEX_LIKE = re.compile(r"\\[A-Za-z]+|[\^_]|^[(\[].*,.*[)\]]$")
# Algebra in single-letter variables ("2x+3", "x = 5"): the plain parser stops at the first
# letter. A word ("12 apples") never qualifies: LaTeX would read it as a product of letters.
_ALGEBRA = re.compile(r"^(?=.*[A-Za-z])(?=.*[-+*/=])(?!.*[A-Za-z]{2})[\w\s+\-*/=().,]+$")


def prepare(completion: str) -> str:
    """The completion with the gaps above filled (see the module docstring)."""
    text = completion.replace("\\$", "")
    hashes = list(_GSM8K.finditer(text))
    if hashes:
        m = hashes[-1]
        text = f"{text[:m.start()]}The final answer is {text[m.end():]}"
    markers = list(_MARKER.finditer(text))
    if markers:
        m = markers[-1]
        span = m.group(1).strip().removeprefix("**").strip()
        span = re.sub(r"[\s.*]+$", "", span)
        if span and not _DELIMITED.search(span) and (_LATEX_LIKE.search(span) or _ALGEBRA.match(span)):
            text = f"{text[:m.start(1)]}${span}$.{text[m.end(1):]}"
    return text


def gold_text(reference: str) -> str:
    """The reference as math-verify should read it: GSM8K's worked solution cut to the text after
    `####`, and a bare answer put in `$...$` so its LaTeX parser reads all of it."""
    ref = str(reference).strip()
    if "####" in ref:
        ref = ref.rsplit("####", 1)[1].strip()
    ref = ref.replace("\\$", "")
    if _DELIMITED.search(ref):
        return ref
    return f"${ref}$"


@lru_cache(maxsize=2)
def _configs(anywhere: bool) -> list:
    import math_verify.grader
    import math_verify.parser
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # Its "timeout is disabled" warning is about its own signal alarm; ours is the worker's.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return [LatexExtractionConfig(try_extract_without_anchor=anywhere),
            ExprExtractionConfig(try_extract_without_anchor=anywhere)]


@lru_cache(maxsize=4096)
def _parse_gold(reference: str):
    from math_verify import parse

    # parsing_timeout=None: math-verify's own limit is a signal alarm (main thread only); the
    # time bound is the worker process's.
    return parse(gold_text(reference), parsing_timeout=None)


def _shown(pred: list) -> str:
    """What math-verify extracted, as text: its matched string when it kept one (without the
    sentence's closing period or bold markers it sometimes keeps: "42**." -> "42")."""
    shown = pred[-1] if len(pred) > 1 and isinstance(pred[-1], str) else str(pred[0])
    return _TRAILING.sub("", shown) or shown


@dataclass(frozen=True)
class MathReward(RewardBase):
    """math-verify extraction and equivalence, each pair bounded by `timeout_s` in a worker.

    `last_number=False` accepts only an answer after a marker or in `\\boxed{}` (math-verify's
    `try_extract_without_anchor=False`), not a number anywhere in the text."""

    last_number: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S

    def grade_many(self, pairs):
        return grade_bounded(self, pairs, self.timeout_s)

    def warm(self) -> None:
        # The first parse builds math-verify's LaTeX grammar (~0.3 s): not a grade's time.
        self.grade_here("$\\frac{1}{2}$", "0.5")

    def grade_here(self, completion: str, reference: str) -> Grade:
        from math_verify import parse, verify

        configs = _configs(self.last_number)
        gold = _parse_gold(str(reference))
        if not gold:
            return Grade(0.0, None, BAD_REFERENCE)
        pred = parse(prepare(completion or ""), extraction_config=configs, parsing_timeout=None)
        if not pred:
            return Grade(0.0, None, NO_ANSWER)
        shown = _shown(pred)
        ok = verify(gold, pred, timeout_seconds=None)
        if not ok and all(isinstance(p, str) for p in pred):
            return Grade(0.0, shown, PARSE_ERROR)
        return Grade(float(ok), shown, None)
