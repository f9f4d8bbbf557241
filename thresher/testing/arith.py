"""Synthetic arithmetic problems with graded difficulty: a leakage-free set for policy tests.

No model has seen these exact problems, answers are computed exactly (Python integers), and
difficulty grows by level, so even a 135M-parameter model shows a spread of solve rates:

  level 1  a + b               one-digit operands          "What is 3 + 4?"
  level 2  a + b               two-digit operands
  level 3  a * b               one-digit times two-digit
  level 4  (a + b) * c         two steps
  level 5  a * b - c * d       three steps, two-digit operands

`generate(n_per_level, seed)` is deterministic in `seed` (one `random.Random` per level, so
adding a level does not change the others).
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable

LEVELS = (1, 2, 3, 4, 5)


def _level1(r: random.Random) -> str:
    return f"{r.randint(1, 9)} + {r.randint(1, 9)}"


def _level2(r: random.Random) -> str:
    return f"{r.randint(10, 99)} + {r.randint(10, 99)}"


def _level3(r: random.Random) -> str:
    return f"{r.randint(2, 9)} * {r.randint(11, 99)}"


def _level4(r: random.Random) -> str:
    return f"({r.randint(10, 99)} + {r.randint(10, 99)}) * {r.randint(3, 9)}"


def _level5(r: random.Random) -> str:
    return f"{r.randint(11, 99)} * {r.randint(11, 99)} - {r.randint(11, 99)} * {r.randint(2, 9)}"


_MAKERS: dict[int, Callable[[random.Random], str]] = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


def evaluate(expression: str) -> int:
    """Exact value of an expression made only of integers, + - * and parentheses."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"unsupported expression: {expression!r}")

    return ev(ast.parse(expression, mode="eval"))


def generate(n_per_level: int, seed: int = 0, levels: tuple[int, ...] = LEVELS) -> list[dict]:
    """`n_per_level` problems per level: dicts with id, question, answer (str), level, expression."""
    out = []
    for level in levels:
        r = random.Random(f"arith:{seed}:{level}")
        for i in range(n_per_level):
            expr = _MAKERS[level](r)
            out.append({
                "id": f"arith-L{level}-{seed}-{i}",
                "question": f"What is {expr}?",
                "answer": str(evaluate(expr)),
                "level": level,
                "expression": expr,
            })
    return out


def write_jsonl(path: str, n_per_level: int, seed: int = 0, levels: tuple[int, ...] = LEVELS) -> int:
    problems = generate(n_per_level, seed, levels)
    with open(path, "w") as fh:
        for p in problems:
            fh.write(json.dumps(p) + "\n")
    return len(problems)
