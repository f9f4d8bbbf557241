"""The `choice` reward: which option letter (A-J) a completion chose, compared with the reference.

Hand-written because no well-kept library reads a chosen letter the way people write it
(math-verify's `StringExtractionConfig` takes "I" in "I think C" and misses "D) 42"). The
forms, strongest first; within a form the last occurrence wins (a model that corrects itself
means its last word):

1. `\\boxed{D}`, `\\boxed{(D)}`, `\\boxed{\\text{D}}`
2. a statement: "The answer is (B)", "Answer: C", "correct option is B", "I think C",
   "I'd go with D", "choose B", "(B) is correct"
3. a marked letter: "(B)", "**B**", `\\text{B}`, a line that begins "D) 42" / "D. 42" / "D:"
4. a completion that is only a letter ("C", "C."), else the last capital standing alone as a
   word, except "I"/"A" before a lowercase word ("I think", "A farmer").

A capital that begins a longer word ("Because") is never a letter: each letter must be followed
by neither a letter nor an apostrophe. All patterns are linear-time (no nested quantifiers), so
the reward needs no worker process to stay bounded in time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thresher.models.reward_grade import BAD_REFERENCE, NO_ANSWER, Grade, RewardBase

_END = r"(?![A-Za-z0-9'’])"
# A capital; a lowercase letter only in parentheses ("I'll choose (a)") or ending the sentence
# ("the answer is b."): "the answer is a prime" has the article "a".
_LETTER = rf"(?:\(\s*([A-Ja-j])\s*\)|\(?\s*\**([A-J]){_END}|([a-j])(?=[.,;!]?\s*$|[.,;!]\s))"
_VERB = r"(?:choose|select|pick|go\s+with|say)"
_BOXED = re.compile(rf"\\boxed\s*\{{\s*(?:\\text(?:bf)?\s*\{{\s*)?\(?\s*([A-J]){_END}")
_STATEMENT = re.compile(
    r"(?i:(?:answer|(?:correct|right|best|final)\s+(?:option|choice)|(?:option|choice)\s+is)"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be))?\s*[:=]?\s*"
    r"|\bI(?:\s+(?:think|believe|guess|choose|select|pick|say)"
    r"|\s+(?:would|will)\s+" + _VERB + r"|['’](?:d|ll)\s+" + _VERB + r")"
    r"(?:\s+(?:it['’]s|it\s+is|that|that['’]s))?\s*"
    r"|\b(?:let['’]s\s+)?" + _VERB + r"\s+)"
    r"(?i:(?:the\s+)?(?:option|choice)\s+)?[\s*]*" + _LETTER)
_IS_CORRECT = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?\**\s+is\s+(?:the\s+)?(?:correct|right|best|answer)")
_MARKED = re.compile(r"\(([A-J])\)|\*\*\(?([A-J])\)?\*\*|\\text(?:bf)?\{\(?([A-J])\)?\}"
                     r"|(?m:^[ \t>*-]*([A-J])[).:](?:\s|$))")
_ONLY = re.compile(r"^[\s*(\[]*([A-Ja-j])[\s*)\].:]*$")
_STANDING = re.compile(rf"(?<![A-Za-z0-9'’])([A-J]){_END}(?!\s+[a-z])|(?<![A-Za-z0-9'’])([B-HJ]){_END}")


_WHITESPACE = re.compile(r"\s+")
_STARS = re.compile(r"\*{2,}")


def _squeeze(text: str) -> str:
    """Whitespace runs to one space (or one newline) and star runs to `**`: the patterns above
    put several optional spaces/stars side by side, which on a long run would backtrack
    quadratically; after this each of them spans a character or two."""
    text = _WHITESPACE.sub(lambda m: "\n" if "\n" in m.group() else " ", text)
    return _STARS.sub("**", text)


def _last_letter(matches: list[re.Match]) -> str | None:
    if not matches:
        return None
    last = max(matches, key=lambda m: m.end())
    return next(g for g in last.groups() if g).upper()


def extract_choice(text: str) -> str | None:
    """The option letter a completion chose, or None (see the module docstring)."""
    if not text:
        return None
    text = _squeeze(text)
    only = _ONLY.match(text)
    if only:
        return only.group(1).upper()
    for found in ([*_BOXED.finditer(text)],
                  [*_STATEMENT.finditer(text), *_IS_CORRECT.finditer(text)],
                  [*_MARKED.finditer(text)],
                  [*_STANDING.finditer(text)]):
        letter = _last_letter(found)
        if letter:
            return letter
    return None


def reference_choice(reference: str) -> str | None:
    """The reference's letter: "B", "(B)", "b", "B) 42", "\\text{(B)}"."""
    return extract_choice(str(reference).strip())


@dataclass(frozen=True)
class ChoiceReward(RewardBase):
    """1 when the chosen letter equals the reference's letter."""

    def grade_here(self, completion: str, reference: str) -> Grade:
        ref = reference_choice(reference)
        if ref is None:
            return Grade(0.0, None, BAD_REFERENCE)
        got = extract_choice(completion or "")
        if got is None:
            return Grade(0.0, None, NO_ANSWER)
        return Grade(float(got == ref), got, None)
