"""Stage types by name: a recipe's `type:` -> the class that implements it.

Three ways to name a stage:
* a built-in name (`exact_dedup`), listed below as an import path and imported on first use,
  so validating a recipe that uses only `exact_dedup` never imports torch;
* a plugin's import path, `my_package.my_module:MyFilter` — or of a plain function
  `(text, row) -> bool | (bool, reason) | float`, wrapped as a selector (`row_function.py`);
* a name a package registers under the `thresher.stages` entry-point group
  (`[project.entry-points."thresher.stages"] my_filter = "my_package.my_module:MyFilter"`).

`name@N` pins a stage's version (its class's `version`): a recipe written for one version
fails to validate on a thresher whose stage behaves differently, instead of silently
changing the data.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from thresher.core.errors import validation_problems
from thresher.core.imports import ImportProblem, import_object
from thresher.core.stage import Stage

ENTRY_POINT_GROUP = "thresher.stages"

BUILTIN: dict[str, str] = {
    # features
    "ngram_features": "thresher.stages.features.ngram_features:NgramFeatures",
    "embed": "thresher.stages.features.embed:Embed",
    "tokenize": "thresher.stages.features.tokenize:Tokenize",
    # dedup
    "exact_dedup": "thresher.stages.dedup.exact_dedup:ExactDedup",
    "semantic_dedup": "thresher.stages.dedup.semantic_dedup:SemanticDedup",
    "minhash_dedup": "thresher.stages.dedup.minhash_dedup:MinhashDedup",
    # quality
    "quality_filter": "thresher.stages.quality.quality_filter:QualityFilter",
    "language_id": "thresher.stages.quality.language_id:LanguageId",
    "pii": "thresher.stages.quality.pii:Pii",
    # decontamination
    "decontaminate": "thresher.stages.decontam.decontaminate:Decontaminate",
    # selection
    "importance_resample": "thresher.stages.selection.importance_resample:ImportanceResample",
    "variance_filter": "thresher.stages.selection.variance_filter:VarianceFilter",
    "mcts_difficulty": "thresher.stages.selection.mcts_difficulty:MctsDifficulty",
}


class UnknownStage(KeyError):
    """A `type:` that names no usable stage; `args[0]` says why and what is known."""

    def __str__(self) -> str:
        return str(self.args[0])


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every stage name this environment knows -> its import path."""
    return {**_entry_points(), **BUILTIN}


def split_version(type_name: str) -> tuple[str, int | None]:
    name, sep, ver = type_name.rpartition("@")
    if not sep:
        return type_name, None
    if not ver.isdigit():
        raise UnknownStage(f"stage type {type_name!r}: the part after '@' must be a version number")
    return name, int(ver)


def stage_class(type_name: str) -> type:
    """The class for a recipe's `type:` (checked to be a usable stage), or `UnknownStage`."""
    name, version = split_version(type_name)
    path = name if ":" in name else available().get(name)
    if path is None:
        raise UnknownStage(f"unknown stage type {name!r}; known types: {', '.join(sorted(available()))}; "
                           "a plugin stage is named by its import path, package.module:Class")
    try:
        cls = import_object(path, "stage type")
    except ImportProblem as exc:
        raise UnknownStage(str(exc)) from None
    if callable(cls) and not isinstance(cls, type):
        cls = _row_function_stage(name, path)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStage(f"stage type {name!r} ({path}) is not a thresher stage: subclass "
                           "thresher.core.Selector or thresher.core.Feature")
    problems = cls.contract_problems()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", cls.type_name or ""):
        # The name keys counters (`<stage>/dropped/<reason>/<source>`) and report files.
        problems.append(f"needs a `type_name` of letters, digits, '_', '-' or '.' (got {cls.type_name!r})")
    if problems:
        raise UnknownStage(f"stage type {name!r} ({path}) {'; '.join(problems)}")
    if version is not None and version != cls.version:
        raise UnknownStage(f"the recipe asks for {name}@{version}, but this thresher has {name} version "
                           f"{cls.version}; check what changed and update the recipe's `type:`")
    return cls


def _row_function_stage(name: str, path: str) -> type:
    """A plain function `(text, row) -> bool | (bool, reason) | float`, wrapped as a selector."""
    from thresher.core.row_function import NotARowFunction, row_function_class

    try:
        return row_function_class(path)
    except NotARowFunction as exc:
        raise UnknownStage(f"stage type {name!r} ({path}) {exc}: a row function takes (text, row) and "
                           "returns a bool, (bool, reason) or a float") from None


def validate_params(spec: Any, loc: str) -> list[str]:
    """Problems with one `StageSpec`'s type and params, as 'stages.N.key: message' lines."""
    try:
        cls = stage_class(spec.type)
    except UnknownStage as exc:
        return [f"{loc}.type: {exc}"]
    try:
        cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        return validation_problems(exc, f"{loc}.params")
    return []


def make_stage(spec: Any, ctx: Any):
    """A `StageSpec` + its context -> the stage object (params validated)."""
    cls = stage_class(spec.type)
    return cls(cls.Params.model_validate(spec.params), ctx)
