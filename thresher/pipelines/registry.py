"""Stage types by name: `type:` in a recipe -> the class that implements it.

Listed as import paths and imported on first use, so validating a recipe that uses only
`exact_dedup` never imports torch, and a reader finds any stage by its name here in one step.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

STAGES: dict[str, str] = {
    # selectors
    "exact_dedup": "thresher.selectors.exact_dedup:ExactDedup",
    "semantic_dedup": "thresher.selectors.semantic_dedup:SemanticDedup",
    "importance_resample": "thresher.selectors.importance_resample:ImportanceResample",
    "decontaminate": "thresher.selectors.decontaminate:Decontaminate",
    "variance_filter": "thresher.selectors.variance_filter:VarianceFilter",
    "mcts_difficulty": "thresher.selectors.mcts_difficulty:MctsDifficulty",
    # feature stages
    "ngram_features": "thresher.pipelines.ngram_features:NgramFeatures",
    "embed": "thresher.pipelines.embed:Embed",
}


class UnknownStage(KeyError):
    pass


def stage_class(type_name: str):
    path = STAGES.get(type_name)
    if path is None:
        raise UnknownStage(
            f"unknown stage type {type_name!r}; known types: {', '.join(sorted(available()))}"
        )
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("thresher"):
            raise UnknownStage(f"stage type {type_name!r} is not available in this version") from None
        raise
    return getattr(mod, attr)


def available() -> list[str]:
    out = []
    for name, path in STAGES.items():
        module = path.partition(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def validate_stage_params(spec: Any, loc: str) -> list[str]:
    """Validate one `StageSpec`'s params against its stage's Params model."""
    try:
        cls = stage_class(spec.type)
    except UnknownStage as exc:
        return [f"{loc}.type: {exc.args[0]}"]
    try:
        cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        out = []
        for e in exc.errors():
            path = ".".join(str(p) for p in e.get("loc", ()))
            got = e.get("input")
            tail = "" if e.get("type") == "missing" or isinstance(got, (dict, list)) else f" (got {got!r})"
            out.append(f"{loc}.params.{path}: {e.get('msg')}{tail}")
        return out
    return []


def build_params(spec: Any):
    cls = stage_class(spec.type)
    return cls, cls.Params.model_validate(spec.params)
