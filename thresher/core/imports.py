"""`package.module:attr` strings -> the object (plugin stages, user rewards)."""

from __future__ import annotations

import importlib
from typing import Any


class ImportProblem(ValueError):
    """A `module:attr` string that does not name an importable object (message says why)."""


def import_object(spec: str, what: str = "object") -> Any:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ImportProblem(f"{what} {spec!r} is not of the form package.module:name")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only "that module is missing" is the user's naming problem; a missing dependency
        # inside their module is theirs to see as it is.
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise ImportProblem(f"{what} {spec!r}: no module named {exc.name!r} (is its package "
                                "installed in this environment?)") from None
        raise
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportProblem(f"{what} {spec!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
