"""A plain function as a selector: `type: my_pkg.rules:is_good` in a recipe, where

    def is_good(text: str, row: dict) -> bool | tuple[bool, str] | float: ...

is called once per row with its text and its public columns (`id`, `source`, `source_file`,
`source_row`, what the source carried, what earlier stages added). It returns

    bool             keep the row? (dropped rows get reason `rejected`)
    (bool, reason)   the same, with the drop reason (any text; `/` becomes `_`)
    float            a score, written to a column named after the function (param `column`);
                     with param `threshold`, rows scoring below it are dropped (`below_threshold`)

`registry.stage_class` wraps a function in a generated `RowFunction` subclass whose
`type_name` is the import path with `:` as `.` (`my_pkg.rules.is_good`), so counters, reports
and `thresher stages` name it by where it lives. The stage pickles as (import path, params,
context): a worker imports the function itself, so it must be importable there (an installed
package, or a module on PYTHONPATH).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import rows
from thresher.core.context import StageContext
from thresher.core.errors import UserError
from thresher.core.imports import import_object
from thresher.core.selector import Selector
from thresher.core.stage import StageParams

KEEP_COL, REASON_COL = "__row_fn_keep", "__row_fn_reason"
REJECTED, BELOW = "rejected", "below_threshold"


class RowFunctionParams(StageParams):
    threshold: float | None = Field(None, description="For a function that returns a score: drop rows "
                                    "scoring below this (reason `below_threshold`). Without it every "
                                    "scored row is kept and only the score column is written.")
    column: str | None = Field(None, description="Name of the score column (default: the function's name).",
                               pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class RowFunctionError(UserError):
    """A user row function raised or returned something unusable on a row (names both)."""


class NotARowFunction(TypeError):
    """The imported object cannot be called as `fn(text, row)`."""


def _takes_text_and_row(fn: Any) -> bool:
    try:
        inspect.signature(fn).bind("text", {})
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): let the call decide
        return True
    return True


def _reason(value: Any) -> str:
    text = str(value).strip().replace("/", "_") if value is not None else ""
    return text or REJECTED


class RowFunction(Selector):
    """Base of the generated row-function stages (one subclass per function)."""

    Params = RowFunctionParams
    function_path: ClassVar[str] = ""
    function_name: ClassVar[str] = ""
    internal_columns = (KEEP_COL, REASON_COL)
    cost = "CPU: one call of the user's Python function per row"

    def __reduce__(self):
        # The generated class cannot be found by name on a worker: rebuild it from the path.
        return (rebuild_stage, (self.function_path, self.params.model_dump(), self.ctx))

    def setup(self) -> None:
        self._function()

    def _function(self):
        fn = self.__dict__.get("_fn")
        if fn is None:
            fn = self.__dict__["_fn"] = import_object(self.function_path, "row function")
        return fn

    @property
    def score_column(self) -> str:
        return self.params.column or self.function_name

    def check(self) -> list[str]:
        if self.score_column in rows.CANONICAL_NAMES or rows.is_internal(self.score_column):
            return [f"params.column: a score column named {self.score_column!r} would replace the row's own "
                    "column; set `column` to another name"]
        return []

    def _fail(self, row: dict, what: str) -> RowFunctionError:
        where = f"{row.get(rows.SOURCE_FILE, '?')}:{row.get(rows.SOURCE_ROW, '?')}"
        return RowFunctionError(f"row function {self.function_path} {what} on the row at {where} "
                                f"(id {row.get(rows.ID, '?')!r}); fix the function or that row")

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        fn = self._function()
        records = rows.drop_internal(batch).to_pylist()
        n = len(records)
        keep = np.ones(n, bool)
        reason: list[str | None] = [None] * n
        scores: list[float | None] = [None] * n
        threshold = self.params.threshold
        for i, row in enumerate(records):
            try:
                out = fn(row.get(rows.TEXT) or "", row)
            except Exception as exc:  # the user's code: any error, named with its row
                raise self._fail(row, f"raised {type(exc).__name__}: {exc}") from exc
            if isinstance(out, (bool, np.bool_)):
                keep[i] = bool(out)
            elif isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (bool, np.bool_)):
                keep[i], reason[i] = bool(out[0]), _reason(out[1])
            elif isinstance(out, (int, float, np.integer, np.floating)):
                s = scores[i] = float(out)
                keep[i] = threshold is None or (not math.isnan(s) and s >= threshold)
                reason[i] = BELOW
            else:
                raise self._fail(row, f"returned {type(out).__name__} {out!r:.80}; return a bool, "
                                      "(bool, reason) or a float score")
            if not keep[i] and reason[i] is None:
                reason[i] = REJECTED
        cols: dict[str, Any] = {KEEP_COL: pa.array(keep, pa.bool_()), REASON_COL: pa.array(reason, pa.string())}
        if any(s is not None for s in scores):
            cols[self.score_column] = pa.array(scores, pa.float64())
        return cols

    def decide(self, batch: pa.RecordBatch):
        keep = batch.column(KEEP_COL).to_numpy(zero_copy_only=False)
        return keep, batch.column(REASON_COL)

    def score_thresholds(self) -> dict[str, float]:
        return {} if self.params.threshold is None else {self.score_column: self.params.threshold}

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": int(batch.num_rows), "kept": int(keep.sum())}
        if self.score_column in batch.schema.names:
            s = batch.column(self.score_column).to_numpy(zero_copy_only=False).astype(float)
            s = s[~np.isnan(s)]
            out.update(scored=int(s.size), score_sum=float(s.sum()))
        return out

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        out = {"function": self.function_path, **summary}
        if out.get("scored"):
            out["score_mean"] = out.pop("score_sum") / out["scored"]
        out.pop("score_sum", None)
        return out


@functools.cache
def row_function_class(path: str) -> type[RowFunction]:
    """The selector class for the function at `path` (`package.module:function`), made once."""
    fn = import_object(path, "row function")
    if isinstance(fn, type) or not callable(fn) or not _takes_text_and_row(fn):
        raise NotARowFunction("is not a function that can be called as fn(text, row)")
    name = getattr(fn, "__name__", path.rpartition(":")[2].rpartition(".")[2])
    first = (inspect.getdoc(fn) or f"the user function {path}").strip().splitlines()[0]
    doc = (f"`{path}`: {first}\n\n"
           "In:  canonical batches. Out: the same; with a float-returning function, a score column\n"
           f"     (`{name}` unless `column` says otherwise). Rows the function rejects are dropped with\n"
           f"     its reason (default `{REJECTED}`), rows scoring below `threshold` with `{BELOW}`.\n"
           "Cost: one Python call of the function per row.\n")
    attrs = {"__doc__": doc, "__module__": __name__, "type_name": path.replace(":", "."),
             "function_path": path, "function_name": name}
    return type(f"RowFunction_{name}", (RowFunction,), attrs)


def rebuild_stage(path: str, params: dict[str, Any], ctx: StageContext) -> RowFunction:
    """Unpickling: the stage for `path` again (imports the function's module on this worker)."""
    return row_function_class(path)(params, ctx)
