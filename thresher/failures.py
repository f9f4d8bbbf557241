"""Failures a person can act on: any exception a command raises becomes an exit code and one
or two lines saying what went wrong, where, and what to do (`thresher --debug` shows the
traceback too).

Exit codes: 2 the recipe or the command line is invalid (nothing ran); 1 the run failed (bad
input over its limit, an output folder that cannot be written, a stage error); 130 / 143 the
run was stopped by SIGINT / SIGTERM (see `thresher.signals`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from thresher.core.errors import RecipeError, UserError

EXIT_RUN = 1
EXIT_USAGE = 2

# What to do about an operating-system error, by errno.
_OS_HINTS = {
    errno.ENOSPC: "free some space or choose another output folder (--out)",
    errno.EDQUOT: "free some space or choose another output folder (--out)",
    errno.EACCES: "check its permissions or choose another output folder (--out)",
    errno.EPERM: "check its permissions or choose another output folder (--out)",
    errno.EROFS: "the file system is read-only: choose another output folder (--out)",
    errno.ENOTDIR: "a file stands where a folder is needed: move it or choose another output folder (--out)",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another output folder (--out)",
    errno.EISDIR: "a folder stands where a file is needed: move it or name a file",
    errno.ENOENT: "check the path",
}


@dataclass
class Failure:
    code: int
    title: str  # "invalid recipe", "run failed", "error"
    lines: list[str] = field(default_factory=list)  # the first follows the title on its line


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from (Beam re-raises a worker's error wrapped)."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lines(exc: BaseException) -> list[str]:
    return [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]


def _os_failure(exc: OSError) -> Failure:
    what = exc.strerror or _first_line(exc)
    where = f": {exc.filename}" if exc.filename else ""
    hint = _OS_HINTS.get(exc.errno or -1)
    return Failure(EXIT_RUN, "error", [f"{what}{where}" + (f" ({hint})" if hint else "")])


def describe(exc: BaseException) -> Failure:
    """The exit code and the lines to print for a command's exception."""
    from thresher.engine.build import BadInputError
    from thresher.engine.outdir import OutputBusyError

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, RecipeError):
            return Failure(EXIT_USAGE, "invalid recipe", [f"({e.origin}):"] + [f"  • {p}" for p in e.problems])
        # thresher's own messages already say what and where: a line per broken file, say.
        if isinstance(e, (BadInputError, OutputBusyError)):
            return Failure(EXIT_RUN, "run failed", _lines(e))
        if isinstance(e, UserError):
            return Failure(EXIT_RUN, "error", _lines(e))
    for e in chain:
        if isinstance(e, OSError) and e.errno is not None:
            return _os_failure(e)
    # Anything else is a stage's or thresher's own error: name it, point at the traceback.
    root = chain[-1]
    return Failure(EXIT_RUN, "run failed", [f"{type(root).__name__}: {_first_line(root)}",
                                            "(run `thresher --debug ...` or set THRESHER_DEBUG=1 for the traceback)"])
