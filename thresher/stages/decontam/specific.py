"""Whether a window that reaches the embedding threshold is a copy of *that* item, or only of its template.

Benchmarks like GSM8K are written from a few hundred story templates ("X sold N cookies and M
cupcakes ... How much money does she have left?"), so a new problem on the same template
embeds as close to a test item (MiniLM: 0.85-0.93) as a paraphrase of it does. Cosine alone
cannot tell them apart; the neighbourhood can. A paraphrase or a number-substituted copy is
close to its one item and much less close to the item's template-mates; a same-template
problem is about as close to several of them, because it copies none. This is the margin
criterion of bitext mining (Artetxe & Schwenk 2019, "Margin-based parallel corpus mining"):
compare a pair's cosine with the query's cosines to its other nearest neighbours, here

    margin = cos(window, best item) - mean cos(window, its next `NEIGHBOURS - 1` nearest items)

and accept the match when it reaches `min_margin`. Items that embed as the same text (cosine
>= `TWIN_COS`: typically two MATH problems that differ only in their numbers, which the
embedding method masks) are one item for this: a copy of one must not lose its margin to the
other. A small benchmark set has no template-mates near a window, so there the margin is large
and the rule changes nothing; it bites where a template is crowded.

Measured (MiniLM onnx, items of GSM8K test + MATH-500 + HumanEval + MMLU, each row's best
window with cosine >= 0.85; bench/decontam_embed.py's pool): GSM8K *train* questions (same
style, different problems), the first 1,000: margins 0.11-0.25, median 0.16, 7 of 11 under
0.18 (the 0.25 is a test question retold with other names and numbers: a true find); the
second 1,000: 0.07-0.39, median 0.16, 10 of 14 under 0.18 (those over it mostly retell a test
question too).
Number-substituted copies of GSM8K items: 0.24-0.52; of MATH-500 items: 0.31 and up for 90
of 91, 0.14 for "What is the remainder of N divided by M?", which two other MATH items read
once numbers are masked (such a copy is a new problem on that template as much as a copy).
Hand-written paraphrases: median 0.26-0.34, 0.17 and up, except one of a templated MATH
number-theory item (0.11, 0.14: alone and buried). The stage's default `embed_margin` 0.18
keeps most same-template questions out and is under every number-substituted GSM8K copy and
every paraphrase but two (0.17, and that MATH one), which the numbers rule below catches.

A paraphrase of a crowded-template item can fall under the margin (it rewords the story, and
the story is all that set it apart). It still keeps the item's numbers, which a same-template
problem does not: so a match also stands when one of the window's neighbours that reaches the
threshold has at least `MIN_NUMBERS` distinct numbers and all of them are in the window.
"""

from __future__ import annotations

import re

import numpy as np

NEIGHBOURS = 10  # the window's nearest items the margin is taken over (the best and 9 others)
TWIN_COS = 0.99  # items this close to the best one are the same item for the margin
MIN_NUMBERS = 2  # one shared number ("2", "10") is chance; all of two or more distinct ones is not

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers(text: str) -> frozenset[str]:
    """The distinct numbers of a text, thousands separators dropped ("80,000" is "80000")."""
    return frozenset(_NUMBER.findall(text.replace(",", "")))


def margins(sim: np.ndarray, idx: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Each window's margin: its best cosine minus the mean of its other neighbours' (those
    that are not twins of the best item; none left, or none at all: 0 is their mean).

    sim, idx: (windows, k) from the item index, best first; idx -1 where the index had fewer
    than k items."""
    if sim.shape[1] == 0:
        return np.zeros(len(sim), np.float32)
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    twin = np.einsum("wd,wkd->wk", item_vectors[safe[:, 0]], item_vectors[safe]) >= TWIN_COS
    other = valid & ~twin
    other[:, 0] = False
    n = other.sum(axis=1)
    mean = np.where(n > 0, (sim * other).sum(axis=1) / np.maximum(n, 1), 0.0)
    return (sim[:, 0] - mean).astype(np.float32)


def accept(win_texts: list[str], sim: np.ndarray, idx: np.ndarray, item_vectors: np.ndarray,
           item_texts: list[str], threshold: float, min_margin: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, column): which windows match an item, and which of their neighbours (a column
    of sim/idx) they match. A window matches its best item when that reaches `threshold` and
    `min_margin` (None: threshold alone), else the first neighbour reaching `threshold` whose
    numbers (`MIN_NUMBERS` or more) all appear in the window. item_texts: each indexed item's
    text with its numbers (not masked)."""
    over = sim[:, 0] >= threshold if sim.shape[1] else np.zeros(len(sim), bool)
    if min_margin is None:
        return over, np.zeros(len(sim), np.int64)
    ok = over & (margins(sim, idx, item_vectors) >= min_margin)
    column = np.zeros(len(sim), np.int64)
    for w in np.flatnonzero(over & ~ok):  # few: windows that pass on cosine but not margin
        have = numbers(win_texts[w])
        for j in range(sim.shape[1]):
            if sim[w, j] < threshold or idx[w, j] < 0:
                break
            want = numbers(item_texts[idx[w, j]])
            if len(want) >= MIN_NUMBERS and want <= have:
                ok[w], column[w] = True, j
                break
    return ok, column
