"""Rewards: score a model's completion against a problem's reference answer.

A reward is a plain callable `(completion: str, reference: str) -> float` in [0, 1], picklable
so it travels to Beam workers. `make_reward(spec)` builds one from a recipe's `reward:` value:

* `math`     (default) final answer extracted, then `math-verify` equivalence (1/2 == 0.5,
             \\frac{1}{2} == 0.5, 18 == 18.00); falls back to normalised string match.
* `exact`    extracted answer == reference, character for character (stripped).
* `normalized` extracted answer and reference lowercased, whitespace/`$`/`,` thousands
             separators/trailing `.` removed, then compared.
* `choice`   multiple choice: the extracted letter (A-J) equals the reference letter.
* `module.path:function`  a user reward with the same signature, imported by path.

Final-answer extraction (`extract_answer`) looks, in order, for the last `\\boxed{...}`, the
text after the last `####`, the text after the last "The answer is"/"Final answer:", and
(when `last_number` is on) the last number in the text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from thresher.core.imports import ImportProblem, import_object

Reward = Callable[[str, str], float]

_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is)?)\s*:?\s*(.+)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_CHOICE = re.compile(r"\(?\b([A-J])\b\)?")


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
        tail = matches[-1].group(1).strip().splitlines()[0].strip()
        # "The answer is 42." / "The answer is: $42$ dollars" -> the first number if any.
        num = _NUMBER.search(tail)
        return num.group(0) if num else tail.rstrip(".").strip() or None
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


def _math_verify_equal(pred: str, ref: str) -> bool:
    from math_verify import parse, verify  # pulls in sympy (~1 s): only when a reward needs it

    # math-verify's timeouts use signal.alarm, which only works in the main thread; Beam runs
    # DoFns in worker threads, where the timeout is switched off (answers are short).
    main = threading.current_thread() is threading.main_thread()
    pt = 5 if main else None
    gold = parse(f"${ref}$", parsing_timeout=pt) or parse(ref, parsing_timeout=pt)
    target = parse(f"${pred}$", parsing_timeout=pt) or parse(pred, parsing_timeout=pt)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=5 if main else None))


@dataclass(frozen=True)
class AnswerReward:
    """Extract the final answer, then compare it with the reference by `mode`."""

    mode: str = "math"
    last_number: bool = True

    def __call__(self, completion: str, reference: str) -> float:
        ref = str(reference).strip()
        if "####" in ref:  # GSM8K-style reference with worked solution
            ref = ref.rsplit("####", 1)[1].strip()
        pred = extract_answer(completion or "", last_number=self.last_number)
        if pred is None:
            return 0.0
        if self.mode == "exact":
            return float(pred.strip() == ref)
        if self.mode == "choice":
            m = _CHOICE.search(pred.strip().upper())
            r = _CHOICE.search(ref.upper())
            return float(bool(m and r and m.group(1) == r.group(1)))
        if normalize_answer(pred) == normalize_answer(ref):
            return 1.0
        if self.mode == "normalized":
            return 0.0
        try:
            return float(_math_verify_equal(pred, ref))
        except Exception:  # an unparsable answer is a wrong answer, not a crashed run
            return 0.0


BUILTIN = ("math", "exact", "normalized", "choice")


def make_reward(spec: str, last_number: bool = True) -> Reward:
    """Build a reward from its recipe name or a `module:function` import path."""
    if spec in BUILTIN:
        return AnswerReward(spec, last_number)
    return import_object(spec, "reward")


def check_reward(spec: str) -> str | None:
    """A problem with a reward spec, or None (used by stages' `check`)."""
    if spec in BUILTIN:
        return None
    try:
        fn = import_object(spec, "reward")
    except ImportProblem as exc:
        return f"{exc} (or one of the built-in rewards: {', '.join(BUILTIN)})"
    except Exception as exc:  # the user's module failed while importing
        return f"reward {spec!r}: importing it failed: {type(exc).__name__}: {exc}"
    if not callable(fn):
        return f"reward {spec!r} is not callable"
    return None
