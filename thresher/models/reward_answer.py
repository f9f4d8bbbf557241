"""Final-answer text for the string rewards (`exact`, `normalized`) and for `has_explicit_answer`.

`extract_answer` looks, in order, for the last `\\boxed{...}`, the line after the last `####`,
the rest of the line after the last "The answer is"/"Final answer:" (with `$`, `**` and a
trailing period removed, and a number followed by words cut to the number: "12 apples" -> "12"),
and (when `last_number` is on) the last number in the text. The `math` reward does not use
this: it uses math-verify's own extraction (reward_math.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thresher.models.reward_grade import NO_ANSWER, Grade, RewardBase

_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is)?)(?:\s*:)?[ \t]*([^\n]*)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_NUMBER_THEN_WORDS = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)(?:\s+[A-Za-z][A-Za-z ]*)?")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...}, braces balanced.

    Written by hand because a regex cannot match nested braces (\\boxed{\\frac{1}{2}}).
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def has_explicit_answer(text: str) -> bool:
    """True when the text states a final answer with a marker (boxed, ####, 'the answer is')."""
    return extract_answer(text, last_number=False) is not None


def _clean_span(span: str) -> str | None:
    span = span.replace("$", "").replace("**", "").strip()
    span = re.sub(r"[\s.]+$", "", span)
    m = _NUMBER_THEN_WORDS.fullmatch(span)
    return (m.group(1) if m else span) or None


def extract_answer(text: str, last_number: bool = True) -> str | None:
    """The final answer stated in `text`, or None. See the module docstring for the order."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail:
            return tail.splitlines()[0].strip()
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        span = _clean_span(matches[-1].group(1))
        if span:
            return span
    if last_number:
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1]
    return None


def normalize_answer(s: str) -> str:
    s = s.strip().lower()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = s.replace("$", "").replace("\\!", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # thousands separators
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    # 18.00 -> 18, 0.50 -> 0.5: numbers compare by value.
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    return s


@dataclass(frozen=True)
class AnswerReward(RewardBase):
    """`exact` or `normalized` string comparison of the extracted answer with the reference.
    Linear-time regexes over the text: bounded in time without a worker process."""

    mode: str = "normalized"
    last_number: bool = True

    def grade_here(self, completion: str, reference: str) -> Grade:
        ref = str(reference).strip()
        if "####" in ref:  # GSM8K-style reference with worked solution
            ref = ref.rsplit("####", 1)[1].strip()
        pred = extract_answer(completion or "", last_number=self.last_number)
        if pred is None:
            return Grade(0.0, None, NO_ANSWER)
        if self.mode == "exact":
            return Grade(float(pred.strip() == ref), pred, None)
        return Grade(float(normalize_answer(pred) == normalize_answer(ref)), pred, None)
