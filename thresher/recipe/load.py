"""Load a recipe: YAML -> `Recipe`, with dotted overrides, every stage's params checked
against its stage class. Errors name the key path and what is wrong (`RecipeError`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from thresher.core.errors import RecipeError, validation_problems
from thresher.core.registry import validate_params
from thresher.recipe.schema import Recipe


def validate_recipe(data: dict[str, Any], base_dir: str = ".", origin: str = "recipe") -> Recipe:
    """Validate a recipe mapping and its stages' params; raise RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError(["<root>: a recipe is a mapping of keys (sources, stages, output ...)"], origin)
    data = dict(data)
    data["base_dir"] = os.path.abspath(base_dir)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc), origin) from None
    problems: list[str] = []
    for i, stage in enumerate(recipe.stages):
        problems += validate_params(stage, f"stages.{i}")
    if problems:
        raise RecipeError(problems, origin)
    return recipe


def load_recipe(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, merge `overrides` (dotted keys) and validate a recipe YAML file."""
    path = Path(path)
    if not path.exists():
        raise RecipeError([f"file not found: {path}"], str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError([f"not valid YAML: {exc}"], str(path)) from None
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return validate_recipe(data, base_dir=str(path.parent), origin=str(path))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
