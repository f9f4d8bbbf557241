"""Errors a person can act on: pydantic's errors as `key.path: message (got value)` lines."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class RecipeError(ValueError):
    """A recipe that cannot run: carries a list of 'key.path: message' lines."""

    def __init__(self, problems: list[str], origin: str = "recipe"):
        self.problems = problems
        self.origin = origin
        super().__init__(f"{origin}: invalid recipe\n" + "\n".join(f"  - {p}" for p in problems))


def format_error(err: dict[str, Any], prefix: str = "") -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    path = ".".join(p for p in (prefix, loc) if p) or "<root>"
    got = err.get("input")
    tail = "" if err.get("type") == "missing" or isinstance(got, (dict, list)) else f" (got {got!r})"
    # pydantic prefixes a validator's ValueError with "Value error, ": noise to a reader.
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{path}: {msg}{tail}"


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    return [format_error(e, prefix) for e in exc.errors()]


class UserError(RuntimeError):
    """A failure whose one-line message already says what went wrong and what to do (exit 1):
    the command line prints it as it is, without a traceback."""
