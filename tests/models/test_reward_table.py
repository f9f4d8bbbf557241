"""Hand-labelled completions, written the way models write them, graded by the `math` and
`choice` rewards: every label must agree (100 %).

The math table goes through the reward's real path (a worker process, time-bounded); the labels
are what a careful person would mark, not what the code happens to return: each row was checked
by hand against its reference.
"""

from __future__ import annotations

import pytest

from thresher.models.reward_choice import ChoiceReward
from thresher.models.reward_math import MathReward

GSM8K_SOLUTION = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                  "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18")

# (completion, reference, hand label: is the completion's final answer right?)
MATH = [
    # fractions
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}", 1),
    ("The answer is $\\frac{1}{2}$.", "0.5", 1),
    ("The answer is $\\frac{1}{2}$.", "1", 0),  # the old "first number after the marker" read 1
    ("So the probability is $\\boxed{\\dfrac{3}{8}}$.", "\\frac{3}{8}", 1),
    ("Therefore the probability is \\boxed{0.375}.", "\\frac{3}{8}", 1),
    ("The answer is $\\frac{2}{4}$", "\\frac{1}{2}", 1),
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{3}", 0),
    ("x = \\boxed{-\\frac{3}{2}}", "-1.5", 1),
    ("The answer is 0.333", "\\frac{1}{3}", 0),
    # roots and powers
    ("The answer is $5\\sqrt{2}$.", "5\\sqrt{2}", 1),
    ("The answer is 5\\sqrt{2}.", "5\\sqrt{2}", 1),  # LaTeX without $: wrapped before parsing
    ("Simplifying, we get $\\boxed{\\sqrt{50}}$.", "5\\sqrt{2}", 1),
    ("$\\boxed{2\\sqrt{3}}$", "\\sqrt{12}", 1),
    ("$\\boxed{\\sqrt[3]{8}}$", "2", 1),
    ("Final answer: $x^2$", "x^2", 1),
    ("Final answer: $x^2$", "2", 0),  # the old reader took the exponent
    ("The answer is $2^{10}$.", "1024", 1),
    ("So $2^{10} = 1024$ ways. The answer is 1024.", "1024", 1),
    ("$\\boxed{10^{-3}}$", "0.001", 1),
    ("The answer is $x^2+2x+1$", "(x+1)^2", 1),
    ("Factoring gives $\\boxed{(x+1)^2}$.", "x^2+2x+1", 1),
    ("$\\boxed{\\frac{\\pi}{2}}$", "\\frac{\\pi}{2}", 1),
    ("$\\boxed{3.14}$", "\\pi", 0),
    # percent and units
    ("The answer is 25%.", "25\\%", 1),
    ("The final answer is 50%.", "0.5", 1),
    ("She scored 80\\% on the test, so the answer is $\\boxed{80}$.", "80", 1),
    ("The price dropped by 15%.", "15", 1),
    ("The answer is 4 inches.", "4", 1),
    ("The length is $\\boxed{4\\text{ inches}}$.", "4", 1),
    ("The area is $\\boxed{12\\text{ cm}^2}$.", "12", 1),
    ("The measure of the angle is $\\boxed{30^\\circ}$.", "30", 1),
    ("The answer is 3.50 dollars", "3.5", 1),
    ("The answer is $\\$18.90$.", "18.90", 1),
    ("So she has \\$10 left. The answer is \\$10.", "10", 1),
    ("The answer is 7 apples.", "7", 1),
    # negative numbers
    ("The answer is -7.", "-7", 1),
    ("The answer is -7.", "7", 0),
    ("The temperature fell to $\\boxed{-12}$ degrees.", "-12", 1),
    # thousands separators
    ("The answer is 1,000,000.", "1000000", 1),
    ("The answer is 1000001", "1000000", 0),
    ("The total is 1,250 dollars.", "1250", 1),
    # tuples, intervals, equations, text
    ("The final answer is $(3, -2)$.", "(3,-2)", 1),
    ("The answer is (3, -2).", "(3,-2)", 1),
    ("The final answer is $(3, -2)$.", "(-2,3)", 0),
    ("$\\boxed{(1,2,3)}$", "(1,2,3)", 1),
    ("The answer is $[2, 5)$", "[2,5)", 1),
    ("The answer is $x = 3$.", "3", 1),
    ("\\boxed{y = 2x + 3}", "y=2x+3", 1),
    ("The final answer is $\\boxed{\\text{Monday}}$", "\\text{Monday}", 1),
    ("The final answer is $\\boxed{\\text{Tuesday}}$", "\\text{Monday}", 0),
    # GSM8K
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
     "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72", "72", 1),
    ("#### 1,250", "1250", 1),
    ("He pays 5 * 250 = $1,250 in total.\n#### 1250", "1,250", 1),
    ("#### 16\nI hope this helps! Ask me if you have 3 more questions.", "16", 1),
    ("She sells 9 eggs at $2 each.\nThe final answer is 18.", GSM8K_SOLUTION, 1),
    ("She sells 9 eggs at $2 each.\nThe final answer is 17.", GSM8K_SOLUTION, 0),
    ("16 - 3 = <<16-3=13>>13 eggs left\nShe makes 13 * 2 = $<<13*2=26>>26\nA: 26", "18", 0),
    # "The final answer is", boxed, several answers
    ("Final Answer: The final answer is $\\boxed{3}$. I hope it is correct.", "3", 1),
    # a corrected answer: the last \boxed counts (math-verify reads two boxes under 70 characters
    # apart with a comma or "and" between as one answer with two parts: "\boxed{2} and \boxed{3}")
    ("The answer is \\boxed{7}.\n\nWait, I made an error in step 2: 3 + 5 is 8, not 7. Recomputing the "
     "total with the corrected sum gives \\boxed{8}.", "8", 1),
    ("The roots are \\boxed{2} and \\boxed{3}.", "2, 3", 1),
    ("First I tried 12, then 15. I think it's about 42 but I'm not sure", "42", 1),
    # plain-text math after the marker, no $ (wrapped before parsing), and other delimiters
    ("The answer is x^2.", "x^2", 1),
    ("The answer is 2x+3.", "2x+3", 1),
    ("The answer is 2x+3.", "2x+4", 0),
    ("The answer is 10^6.", "1000000", 1),
    ("The answer is **42**.", "42", 1),
    ("Answer: 1/3", "\\frac{1}{3}", 1),
    ("**Final Answer**\n\\[\n\\boxed{\\frac{5}{2}}\n\\]", "2.5", 1),
    ("Hence the answer is \\(\\frac{7}{3}\\).", "\\frac{7}{3}", 1),
    ("I could not solve this problem.", "5", 0),
]

# (completion, reference, hand label: the letter the completion chose, or None)
CHOICE = [
    ("The answer is (B) because 12 apples", "B", "B"),  # the old reader took 12
    ("I think C", "C", "C"),  # ... and "I" here
    ("Answer: C", "C", "C"),
    ("**B**", "B", "B"),
    ("D) 42", "D", "D"),
    ("\\boxed{D}", "D", "D"),
    ("$\\boxed{\\text{(A)}}$", "A", "A"),
    ("The correct option is (E).", "E", "E"),
    ("C", "C", "C"),
    ("c.", "C", "C"),
    ("(b)", "B", "B"),
    ("Because the derivative is positive, the answer is D.", "D", "D"),
    ("I'd go with D.", "D", "D"),
    ("I'll choose (a).", "A", "A"),
    ("Option B is tempting, but the answer is D.", "D", "D"),
    ("(B) is correct.", "B", "B"),
    ("The answer is A.", "A", "A"),
    ("A farmer has 12 apples and gives away 5, so the answer is C", "C", "C"),
    ("Answer: **C**", "C", "C"),
    ("Let's go with option E", "E", "E"),
    ("I believe it's B.", "B", "B"),
    ("A is the correct answer.", "A", "A"),
    ("The answer is C. Wait, actually the answer is B.", "B", "B"),
    ("The answer is D, not B.", "D", "D"),
    ("Between (A) and (C), only (C) fits the data.", "C", "C"),
    ("Looking at the options:\nA) 12\nB) 13\nC) 14\nThe answer is B", "B", "B"),
    ("Final Answer: The final answer is $\\boxed{C}$. I hope it is correct.", "C", "C"),
    ("**Answer:** (D) 42", "D", "D"),
    ("Correct answer: B) 13", "B", "B"),
    ("B. 13", "B", "B"),
    ("> **C**", "C", "C"),
    ("the answer is b.", "B", "B"),
    ("I think C", "B", "C"),
    ("Since 7 is prime, I would select (G).", "G", "G"),
    ("The best choice is J", "J", "J"),
    # distractors: nothing chosen
    ("The answer is 12 apples.", "B", None),
    ("I am not sure.", "A", None),
    ("It depends on the context.", "C", None),
    ("Because I think so.", "B", None),
    ("The answer is a prime number.", "A", None),
    ("All of the options look plausible to me.", "A", None),
]


def test_the_tables_are_big_enough():
    assert len(MATH) + len(CHOICE) >= 80
    assert {label for *_, label in MATH} == {0, 1}


@pytest.fixture(scope="module")
def math_grades():
    """One batch through the worker pool (a worker imports math-verify and sympy, ~2 s: the
    tests using this are marked slow; later slow tests reuse the worker)."""
    return MathReward().grade_many([(c, r) for c, r, _ in MATH])


@pytest.mark.slow
def test_math_table_agrees_with_every_hand_label(math_grades):
    wrong = [(c, r, label, g) for (c, r, label), g in zip(MATH, math_grades, strict=True) if g.score != label]
    assert wrong == []


@pytest.mark.slow
def test_math_extracted_is_what_the_completion_says(math_grades):
    shown = {MATH[i][0]: g.extracted for i, g in enumerate(math_grades)}
    assert shown["The answer is $\\frac{1}{2}$."] == "\\frac{1}{2}"
    assert shown["Final answer: $x^2$"] == "x^2"
    assert shown["The answer is (3, -2)."] == "(3, -2)"
    assert shown["#### 16\nI hope this helps! Ask me if you have 3 more questions."] == "16"
    assert shown["He pays 5 * 250 = $1,250 in total.\n#### 1250"] == "1250"
    assert shown["The length is $\\boxed{4\\text{ inches}}$."] == "4"
    assert shown["The answer is **42**."] == "42"
    assert shown["The answer is 2x+3."] == "2x+3"
    assert shown["I could not solve this problem."] is None
    failures = [g.failure for g in math_grades]
    assert failures.count("no_answer") == 1 and set(failures) == {None, "no_answer"}


@pytest.mark.slow
def test_math_last_number_off_needs_a_marker():
    grades = MathReward(last_number=False).grade_many([
        ("First I tried 12. I think it's about 42", "42"), ("So it is \\boxed{42} in the end", "42"),
        ("The final answer is 42.", "42")])
    assert [(g.score, g.failure) for g in grades] == [(0.0, "no_answer"), (1.0, None), (1.0, None)]


@pytest.mark.parametrize("completion,reference,label", CHOICE)
def test_choice_table(completion, reference, label):
    grade = ChoiceReward().grade_here(completion, reference)
    assert grade.extracted == label
    assert grade.score == float(label == reference.upper())
    assert grade.failure == (None if label else "no_answer")


@pytest.mark.parametrize("reference", ["B", "b", "(B)", "B) 13", "\\text{(B)}", " B. "])
def test_choice_reads_the_reference_like_a_completion(reference):
    assert ChoiceReward().grade_here("Answer: B", reference).score == 1.0


def test_choice_reference_without_a_letter_is_a_bad_reference():
    assert ChoiceReward().grade_here("Answer: B", "13").failure == "bad_reference"
